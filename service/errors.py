"""Every error is JSON ``{code, message}`` with a fitting status; never a stack trace."""

from __future__ import annotations

import logging

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from optimization.errors import InvalidRequest

log = logging.getLogger("tally.api")


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        self.status, self.code, self.message, self.headers = status, code, message, headers


def _json(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"code": code, "message": message}, status_code=status, headers=headers)


def _describe(error: dict) -> str:
    where = ".".join(str(p) for p in error.get("loc", ()) if p not in ("body", "query", "path", "header"))
    got = error.get("input")
    shown = "" if isinstance(got, (dict, list)) or got is None else f" (got {str(got)[:40]!r})"
    return f"{where or 'request'}: {error.get('msg', 'invalid')}{shown}"


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError):
        return _json(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(InvalidRequest)
    async def invalid_request(_: Request, exc: InvalidRequest):
        return _json(422, "invalid_request", str(exc))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError):
        return _json(422, "invalid_request", "; ".join(_describe(e) for e in exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _json(exc.status_code, code, str(exc.detail))

    @app.exception_handler(redis.RedisError)
    async def redis_down(_: Request, exc: redis.RedisError):
        log.warning("redis unavailable: %s", exc)
        return _json(503, "redis_unavailable", "the job store (Redis) is unreachable; retry shortly")

    @app.exception_handler(Exception)
    async def internal(_: Request, exc: Exception):
        log.exception("unhandled error")
        return _json(500, "internal", "internal error; it has been logged")
