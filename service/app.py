"""The FastAPI application factory. HTTP only: every Redis access goes through ``workers``' functions."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline

from workers.queue import connect, connect_async
from workers.settings import Settings, get_settings

from . import errors
from .routes import health, jobs, models, tokens

DOCS_STATIC_URL = "/static/docs"


def create_app(settings: Settings | None = None) -> FastAPI:
    """The API. ``/docs`` (Swagger UI) and ``/redoc`` (ReDoc) work offline: ``FastAPIOffline`` is FastAPI with
    ``docs_url=None, redoc_url=None`` plus its own ``/docs``, ``/redoc`` and OAuth2-redirect pages (kept out
    of the OpenAPI schema) whose JS, CSS and favicon are served by this API under ``DOCS_STATIC_URL`` from
    the files the ``fastapi-offline`` package ships (Swagger UI 5, which reads OpenAPI 3.1, and ReDoc's
    standalone bundle; Google Fonts off), never from a CDN."""
    settings = settings or get_settings()
    app = FastAPIOffline(title="Tally", version="0.1.0", static_url=DOCS_STATIC_URL,
                         description="Text-to-image with the exact number of objects, verified by a detector.")
    app.state.settings = settings
    app.state.redis = connect(settings)
    app.state.async_redis = connect_async(settings)
    errors.install(app)

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        length, limit = request.headers.get("content-length"), settings.max_body_bytes
        if length and length.isdigit() and int(length) > limit:
            return JSONResponse({"code": "too_large", "message": f"request bodies are at most {limit} bytes"},
                                status_code=413)
        return await call_next(request)

    for router in (jobs.router, tokens.router, models.router, health.router):
        app.include_router(router)
    return app


def app() -> FastAPI:
    """For ``uvicorn --factory service.app:app``."""
    return create_app()
