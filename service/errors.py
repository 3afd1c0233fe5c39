"""Every error is JSON ``{code, message}`` with a fitting status; never a stack trace."""

from __future__ import annotations

import json
import logging
import re
from collections import Counter

import anyio
import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from optimization.errors import InvalidRequest
from workers import stats
from workers.queue import REDIS_TROUBLE, redis_trouble
from workers.token_files import StoreUnavailable

log = logging.getLogger("tally.api")


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        self.status, self.code, self.message, self.headers = status, code, message, headers


class BodyRefused(StarletteHTTPException):
    """Raised while a request body is read (``app.BodyGuard``). An HTTPException, because FastAPI's body
    parsing passes those through (any other exception there becomes a 400)."""

    code = "invalid_request"


class BodyTooLarge(BodyRefused):
    code = "too_large"

    def __init__(self, limit: int):
        super().__init__(413, f"request bodies are at most {limit} bytes")


class BodyNotUtf8(BodyRefused):
    def __init__(self):
        super().__init__(422, "body: not UTF-8; send a JSON document encoded in UTF-8")


HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}
_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def _allowed_methods(request: Request) -> str:
    """Every method some route serves at this path: FastAPI makes one route per method, and Starlette's 405
    names only the first route whose path matched. A path that a route names literally (``/v1/tokens/learning``)
    is that resource, not a value of another route's parameter (``/v1/tokens/{key}``)."""
    routes = [route for r in request.app.router.routes  # FastAPI wraps an included router in one route
              for route in (r.original_router.routes if hasattr(r, "original_router") else [r])]
    matches = {m: [child.get("path_params") or {} for match, child in
                   (r.matches({**request.scope, "method": m, "path_params": {}}) for r in routes)
                   if match == Match.FULL] for m in _METHODS}
    literal = any(not params for found in matches.values() for params in found)
    return ", ".join(m for m, found in matches.items() if any(not (literal and params) for params in found))


def json_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"code": code, "message": message}, status_code=status, headers=headers)


def _describe(error: dict) -> str:
    if error.get("type") == "json_invalid":  # its loc is the character position: say what went wrong instead
        reason = (error.get("ctx") or {}).get("error", "cannot be parsed")
        return f"the body is not valid JSON: {reason} at character {error['loc'][-1]}; send one JSON object"
    where = ".".join(str(p) for p in error.get("loc", ()) if p not in ("body", "query", "path", "header"))
    got = error.get("input")
    shown = "" if isinstance(got, (dict, list)) or got is None else f" (got {str(got)[:40]!r})"
    return f"{where or 'request'}: {error.get('msg', 'invalid')}{shown}"


PROBES = ("/healthz", "/readyz")  # "not ready yet" is what a probe asks, not an error of the service


class ErrorCounter:
    """Pure ASGI: counts each error response (status 400 and up) for /metrics by its status and the ``code``
    of its body, once the response is sent, and an exception no handler took as 500 ``internal`` (Starlette's
    outermost layer writes that response). A response below 400 costs a comparison and no Redis call. An
    error that Redis is unreachable is not counted: Redis is where the count would go."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PROBES:
            return await self.app(scope, receive, send)
        status, body = 0, b""

        async def watched(message: Message) -> None:
            nonlocal status, body
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and status >= 400 and len(body) < 4096:
                body += message.get("body", b"")
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except Exception:
            if not status:
                await _count_error(scope, 500, "internal")
            raise
        if status >= 400:
            await _count_error(scope, status, _code_of(body))


def _code_of(body: bytes) -> str:
    try:
        code = json.loads(body).get("code")
    except (ValueError, AttributeError):
        return "unknown"
    return code if isinstance(code, str) and re.fullmatch(r"[a-z_]{1,40}", code) else "unknown"


async def _count_error(scope: Scope, status: int, code: str) -> None:
    if code in REDIS_TROUBLE:
        return  # counted in the process (``redis_troubles``): Redis is where this count would go
    state = scope["app"].state
    try:
        await anyio.to_thread.run_sync(stats.count_http_error, state.redis, state.settings, status, code)
    except redis.RedisError:
        pass  # the response went out; a lost count is no reason to fail anything


def install(app: FastAPI) -> None:
    app.add_middleware(ErrorCounter)
    app.state.redis_troubles = Counter()

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError):
        return json_response(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(InvalidRequest)
    async def invalid_request(_: Request, exc: InvalidRequest):
        return json_response(422, "invalid_request", str(exc))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError):
        return json_response(422, "invalid_request", "; ".join(_describe(e) for e in exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        if isinstance(exc, BodyRefused):
            return json_response(exc.status_code, exc.code, exc.detail)
        if exc.status_code == 400 and exc.__cause__ is not None:  # FastAPI could not parse the body
            what = "not UTF-8" if isinstance(exc.__cause__, UnicodeDecodeError) else "not readable as JSON"
            return json_response(422, "invalid_request", f"body: {what}; send a JSON document encoded in UTF-8")
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = _allowed_methods(request)
        return json_response(exc.status_code, HTTP_CODES.get(exc.status_code, "http_error"), str(exc.detail),
                             headers or None)

    @app.exception_handler(StoreUnavailable)
    async def store_unavailable(_: Request, exc: StoreUnavailable):
        log.warning("store unavailable: %s", exc)
        return json_response(503, "store_unavailable", f"{exc}; nothing was changed, retry once it is fixed",
                             {"Retry-After": "30"})

    @app.exception_handler(redis.RedisError)
    async def redis_down(request: Request, exc: redis.RedisError):
        trouble = redis_trouble(exc)
        log.warning("%s: %s", trouble, exc)
        request.app.state.redis_troubles[trouble] += 1  # in the process: Redis may refuse the count
        return json_response(503, trouble, REDIS_TROUBLE[trouble], {"Retry-After": "2"})

    @app.exception_handler(Exception)
    async def internal(_: Request, exc: Exception):
        log.exception("unhandled error")
        # Starlette raises the error again once this is sent, and the server then drops the connection:
        # saying so lets a client with pooled connections open a new one instead of failing on this one.
        return json_response(500, "internal", "internal error; it has been logged", {"Connection": "close"})
