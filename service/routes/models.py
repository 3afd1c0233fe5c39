"""/v1/models: the configured models, their detector classes and their live workers."""

from __future__ import annotations

from fastapi import APIRouter

from workers import records
from workers.queue import live_workers

from ..deps import RedisDep, SettingsDep
from ..schemas import ModelOut

router = APIRouter(prefix="/v1/models", tags=["models"])


@router.get("", response_model=list[ModelOut])
def list_models(settings: SettingsDep, connection: RedisDep) -> list[ModelOut]:
    out = []
    for m in settings.models:
        info = records.model_info(connection, settings, m.id) or {}
        out.append(ModelOut(id=m.id, pipeline=m.pipeline, detector=m.detector, device=m.device,
                            fingerprint=info.get("fingerprint"), classes=m.classes or info.get("classes"),
                            max_count=m.max_count, default_policy=settings.policy_for(m), live_workers=live_workers(connection, settings, m.id),
                            queue_depth=records.queue_depth(connection, settings, m.id)))
    return out
