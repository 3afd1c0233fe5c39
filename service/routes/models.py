"""/v1/models: the configured models, their detector classes and their live workers."""

from __future__ import annotations

from fastapi import APIRouter

from workers import jobs
from workers.queue import live_workers

from ..deps import RedisDep, SettingsDep
from ..schemas import ModelOut

router = APIRouter(prefix="/v1/models", tags=["models"])


@router.get("", response_model=list[ModelOut])
def list_models(settings: SettingsDep, connection: RedisDep) -> list[ModelOut]:
    out = []
    for m in settings.models:
        info = jobs.model_info(connection, settings, m.id) or {}
        out.append(ModelOut(id=m.id, pipeline=m.pipeline, detector=m.detector, device=m.device,
                            fingerprint=info.get("fingerprint"), classes=info.get("classes"),
                            max_count=settings.max_count, live_workers=live_workers(connection, settings, m.id),
                            queue_depth=jobs.queue_depth(connection, m.id)))
    return out
