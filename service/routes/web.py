"""The web page at ``/``: plain HTML, CSS and JavaScript modules from ``service/web``, served by the API itself
(no build step, no CDN). The page is only a client: it calls the same public API as every other client with
the key its user enters, so it needs no key to load and holds no privilege of its own. Not in the OpenAPI
document: it is not part of the API."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
STATIC_URL = "/web"
# Everything the page loads comes from the API's own origin: scripts and styles as files (no inline code),
# images as the blob: URLs it makes of the images it fetched with the key.
CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
                           "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
                           "form-action 'none'")

router = APIRouter(include_in_schema=False)


class _Assets(StaticFiles):
    """Revalidated on every load (by ETag, so mostly a 304): an upgraded deployment's page never runs with the
    previous version's modules from a browser's cache."""

    def file_response(self, *args, **kwargs):
        response = super().file_response(*args, **kwargs)
        response.headers["Cache-Control"] = "no-cache"
        return response


@router.get("/")
def index() -> FileResponse:
    return FileResponse(WEB_DIR / "index.html", headers={"Content-Security-Policy": CONTENT_SECURITY_POLICY,
                                                        "Cache-Control": "no-cache"})


def install(app: FastAPI) -> None:
    """The page at ``/`` and its assets under ``STATIC_URL``."""
    app.include_router(router)
    app.mount(STATIC_URL, _Assets(directory=WEB_DIR), name="web")
