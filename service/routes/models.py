"""/v1/models: the configured models, their detector classes and their live workers."""

from __future__ import annotations

import re

from fastapi import APIRouter, Depends

from workers import stats
from workers.queue import live_workers, model_info, queue_depth

from ..deps import AUTH_ERRORS, RedisDep, SettingsDep, get_caller
from ..schemas import ModelOut

router = APIRouter(prefix="/v1/models", tags=["models"], dependencies=[Depends(get_caller)], responses=AUTH_ERRORS)

# A hub id: "name" or "namespace/name" (what huggingface_hub accepts), nothing that reads as a path.
_HUB_ID = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*(/[A-Za-z0-9_-][A-Za-z0-9_.-]*)?$")


def public_source(value: str) -> str:
    """What the API shows of a configured pipeline or detector: a hub id (``stabilityai/sdxl-turbo``,
    ``yolo11n.pt``) as given; anything else (an absolute or relative path, ``~``, a Windows path, a URL) only
    its final name (``pipeline``, ``detector.pt``), so no server path leaks. A relative ``a/b`` is
    indistinguishable from a hub id and shown as given, as it reveals nothing of the server's layout."""
    if _HUB_ID.match(value):
        return value
    name = re.split(r"[\\/]", value.rstrip("\\/"))[-1]
    return name or "(local)"


@router.get("", response_model=list[ModelOut])
def list_models(settings: SettingsDep, connection: RedisDep) -> list[ModelOut]:
    """The configured models, their classes, default policy and live workers.

    Scope: any key."""
    out = []
    for m in settings.models:
        info = model_info(connection, settings, m.id) or {}
        workers, depth = live_workers(connection, settings, m.id), queue_depth(connection, settings, m.id)
        out.append(ModelOut(id=m.id, pipeline=public_source(m.pipeline), detector=public_source(m.detector),
                            device=m.device, fingerprint=info.get("fingerprint"),
                            classes=m.classes or info.get("classes"), max_count=m.max_count,
                            default_policy=settings.policy_for(m),
                            live_workers=workers, queue_depth=depth,
                            estimated_wait_s=stats.estimated_wait(depth, len(workers),
                                                                  stats.seconds_per_job(connection, settings, m.id))))
    return out
