"""Links in responses: ``settings.public_url`` + path when the deployment sets it, else the plain path.

Never built from the request's Host header (or X-Forwarded-*): a caller who sends ``Host: evil.example``
must not get links to evil.example back, e.g. into a shared job record or a cache. A path is resolved by
the client against the URL it called (``tally.client.Client.absolute``).
"""

from __future__ import annotations

from urllib.parse import quote

from fastapi import Request


def link(request: Request, *segments: str | int) -> str:
    """The link to ``/v1/<segments...>``; each segment is percent-quoted (token keys may hold spaces)."""
    path = "/v1/" + "/".join(quote(str(s), safe="") for s in segments)
    base = request.app.state.settings.public_url
    if base:
        return base.rstrip("/") + path
    return request.scope.get("root_path", "").rstrip("/") + path  # the server's --root-path, not a header


def job_links(request: Request, job_id: str) -> dict[str, str]:
    return {"self": link(request, "jobs", job_id), "events": link(request, "jobs", job_id, "events"),
            "images": link(request, "jobs", job_id, "images") + "/{n}"}


def image_url(request: Request, job_id: str, n: int) -> str:
    return link(request, "jobs", job_id, "images", n)


def token_links(request: Request, key: str) -> dict[str, str]:
    return {"self": link(request, "tokens", key), "file": link(request, "tokens", key, "file")}
