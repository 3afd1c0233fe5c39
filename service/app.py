"""The FastAPI application factory. HTTP only: every Redis access goes through ``workers``' functions."""

from __future__ import annotations

import asyncio
import base64
import codecs
import hashlib
import logging
import re
from contextlib import asynccontextmanager

import redis
from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi_offline import FastAPIOffline
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from workers.auth import KeyStore
from workers.rate_limit import Limiter
from workers.queue import connect, connect_async
from workers.recovery import upkeep
from workers.settings import Settings, get_settings

from . import errors
from .routes import health, jobs, me, models, tokens, web

DOCS_STATIC_URL = "/static/docs"
log = logging.getLogger("tally.api")


@asynccontextmanager
async def lifespan(app: FastAPI):
    """While the API serves, one of its processes does the upkeep every few seconds (``recovery.upkeep``)."""
    settings = app.state.settings
    period = max(1.0, min(10.0, settings.no_worker_timeout_s / 3))

    async def every_period() -> None:
        while True:
            await asyncio.sleep(period)
            try:
                await run_in_threadpool(upkeep, app.state.redis, settings, period)
            except redis.RedisError:
                pass  # Redis away or refusing writes: next period
            except Exception:
                log.exception("upkeep failed")

    task = asyncio.create_task(every_period())
    yield
    task.cancel()


class BodyGuard:
    """Pure ASGI, on the bytes actually read (chunked bodies included): counts the request body as the app
    reads it and answers 413 ``too_large`` as soon as the count passes ``limit`` (a Content-Length above it:
    before reading anything), never reading the rest; and a JSON body must be UTF-8 (RFC 8259), checked as
    it arrives (422 ``invalid_request``; Python's JSON parser would also take UTF-16 and UTF-32). The errors
    are raised inside ``receive`` so that the routes' exception handlers write them; one that escapes them
    is answered here."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        length = headers.get("content-length")
        if length is not None and length.isascii() and length.isdigit() and int(length) > self.limit:
            return await errors.json_response(413, "too_large", errors.BodyTooLarge(self.limit).detail)(
                scope, receive, send)
        media_type = headers.get("content-type", "").split(";")[0].strip().lower()
        utf8 = (codecs.getincrementaldecoder("utf-8")()
                if media_type == "application/json" or media_type.endswith("+json") else None)
        received, started = 0, False

        async def guarded() -> Message:
            nonlocal received
            if received > self.limit:
                raise errors.BodyTooLarge(self.limit)
            message = await receive()
            if message["type"] == "http.request":
                chunk = message.get("body", b"")
                received += len(chunk)
                if received > self.limit:
                    raise errors.BodyTooLarge(self.limit)
                if utf8 is not None:
                    try:
                        utf8.decode(chunk, final=not message.get("more_body", False))
                    except UnicodeDecodeError:
                        raise errors.BodyNotUtf8() from None
            return message

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, guarded, tracked)
        except errors.BodyRefused as exc:
            if started:
                raise
            await errors.json_response(exc.status_code, exc.code, exc.detail)(scope, receive, send)


# /docs and /redoc load everything from the API (FastAPIOffline); this policy also stops what their scripts would
# fetch from elsewhere (ReDoc's Redocly logo from cdn.redoc.ly): no outside request at all. Their one inline
# script is allowed by its hash (``DocsPolicy``), not by 'unsafe-inline'.
DOCS_CSP = ("default-src 'self'; script-src 'self' {scripts}; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; connect-src 'self'; "
            "object-src 'none'; base-uri 'none'; frame-ancestors 'none'")
INLINE_SCRIPT = re.compile(rb"<script(?![^>]*\bsrc=)[^>]*>(.*?)</script>", re.DOTALL)


class DocsPolicy:
    """Pure ASGI: the ``DOCS_CSP`` header on the documentation pages, naming the SHA-256 of each inline script
    of the page (the page is small: it is held until its end to hash them)."""

    PAGES = ("/docs", "/redoc", "/docs/oauth2-redirect")

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.PAGES:
            return await self.app(scope, receive, send)
        start, body = None, b""

        async def with_policy(message: Message) -> None:
            nonlocal start, body
            if message["type"] == "http.response.start":
                start = message
                return
            body += message.get("body", b"")
            if message.get("more_body"):
                return
            hashes = " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(m).digest()).decode()}'"
                              for m in INLINE_SCRIPT.findall(body)) or "'none'"
            csp = DOCS_CSP.format(scripts=hashes).replace("'self' 'none'", "'self'")
            await send({**start, "headers": [*start.get("headers", []), (b"content-security-policy", csp.encode())]})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, with_policy)


def _deployment_limits(schema: dict, settings: Settings) -> dict:
    """The OpenAPI document with this deployment's limits on job requests (the schema classes are static; the
    request check in ``workers.requests`` gives the precise 422 messages)."""
    def bound(component: str, field: str, **limits) -> None:
        prop = schema.get("components", {}).get("schemas", {}).get(component, {}).get("properties", {}).get(field)
        if prop is None:
            return
        for branch in prop.get("anyOf", [prop]):  # an optional field: the number branch, not the null one
            if branch.get("type") in ("integer", "number", "string"):
                branch.update({k: v for k, v in limits.items() if v is not None})

    bound("JobCreate", "count", minimum=1, maximum=max(m.max_count for m in settings.models))
    bound("JobCreate", "num_images", minimum=1, maximum=settings.max_images)
    bound("JobCreate", "prompt", maxLength=settings.max_prompt_length)
    budget = schema.get("components", {}).get("schemas", {}).get("BudgetIn", {}).get("properties", {})
    for name in ("max_seconds", "max_candidates", "max_iterations"):
        bound("BudgetIn", name, maximum=getattr(settings.max_budget, name))
        if name in budget:  # what an absent (or null) field means here
            budget[name]["default"] = getattr(settings.default_budget, name)
    return schema


def create_app(settings: Settings | None = None) -> FastAPI:
    """The API. ``/docs`` and ``/redoc`` work offline: ``FastAPIOffline`` serves Swagger UI 5 (it reads
    OpenAPI 3.1) and ReDoc from the files its package ships, under ``DOCS_STATIC_URL``, never from a CDN."""
    settings = settings or get_settings()
    app = FastAPIOffline(title="Tally", version="0.1.0", static_url=DOCS_STATIC_URL,
                         description="Text-to-image with the exact number of objects, verified by a detector.",
                         lifespan=lifespan)
    app.state.settings = settings
    app.state.redis = connect(settings)
    app.state.async_redis = connect_async(settings)
    app.state.keys = KeyStore(app.state.redis, settings)
    if settings.auth == "required":
        try:
            if settings.admin_key_file is not None:
                app.state.keys.ensure(settings.admin_key_file.read_text().strip(), "deployment-admin")
            app.state.keys.reseed()  # keys created or revoked while Redis was away (never lifts a revocation)
        except redis.RedisError:
            pass
    app.state.limiter = Limiter(settings)
    errors.install(app)
    app.add_middleware(BodyGuard, limit=settings.max_body_bytes)
    app.add_middleware(DocsPolicy)

    def openapi() -> dict:
        if app.openapi_schema is None:
            app.openapi_schema = _deployment_limits(FastAPI.openapi(app), settings)
        return app.openapi_schema

    app.openapi = openapi

    for router in (jobs.router, tokens.router, models.router, me.router, health.router):
        app.include_router(router)
    web.install(app)
    return app


def app() -> FastAPI:
    """For ``uvicorn --factory service.app:app``."""
    return create_app()
