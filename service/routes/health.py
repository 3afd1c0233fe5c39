"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import redis
from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from workers.metrics import prometheus_text
from workers.queue import live_workers

from ..deps import RedisDep, SettingsDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict:
    """The API process answers (it needs nothing else for that)."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "Redis unreachable or a model without a live worker."}})
def readyz(settings: SettingsDep, connection: RedisDep) -> JSONResponse:
    try:
        connection.ping()
        workers = {m.id: len(live_workers(connection, settings, m.id)) for m in settings.models}
    except redis.RedisError:
        return JSONResponse({"code": "redis_unavailable", "message": "Redis is unreachable"}, status_code=503)
    missing = [m for m, n in workers.items() if n == 0]
    if missing:
        return JSONResponse({"code": "no_worker", "message": f"no live worker for model(s): {', '.join(missing)}",
                             "workers": workers}, status_code=503)
    return JSONResponse({"status": "ready", "workers": workers})


@router.get("/metrics", response_class=Response)
def metrics(settings: SettingsDep, connection: RedisDep) -> Response:
    return Response(prometheus_text(connection, settings), media_type="text/plain; version=0.0.4")
