"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import redis
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from workers.metrics import prometheus_text
from workers.queue import REDIS_TROUBLE, keys, live_workers, redis_trouble

from ..deps import RedisDep, SettingsDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict:
    """The API process answers (it needs nothing else for that)."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "Redis unreachable or refusing writes (full, read-only, "
                                                      "loading), or a model without a live worker."}})
def readyz(request: Request, settings: SettingsDep, connection: RedisDep) -> JSONResponse:
    try:
        connection.set(keys(settings).readiness_probe(), 1, ex=60)  # a write: a full Redis is not ready
        workers = {m.id: len(live_workers(connection, settings, m.id)) for m in settings.models}
    except redis.RedisError as exc:
        trouble = redis_trouble(exc)
        request.app.state.redis_troubles[trouble] += 1
        return JSONResponse({"code": trouble, "message": REDIS_TROUBLE[trouble]}, status_code=503)
    missing = [m for m, n in workers.items() if n == 0]
    if missing:
        return JSONResponse({"code": "no_worker", "message": f"no live worker for model(s): {', '.join(missing)}",
                             "workers": workers}, status_code=503)
    return JSONResponse({"status": "ready", "workers": workers})


@router.get("/metrics", response_class=Response)
def metrics(request: Request, settings: SettingsDep, connection: RedisDep) -> Response:
    return Response(prometheus_text(connection, settings, request.app.state.redis_troubles),
                    media_type="text/plain; version=0.0.4")
