"""The FastAPI application factory. HTTP only: every Redis access goes through ``workers``' functions."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from workers.queue import connect
from workers.settings import Settings, get_settings

from . import errors
from .routes import health, jobs, models, tokens

def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(title="Tally", version="0.1.0",
                  description="Text-to-image with the exact number of objects, verified by a detector.")
    app.state.settings = settings
    app.state.redis = connect(settings)
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
