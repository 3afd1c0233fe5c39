"""/v1/tokens: the library of count tokens (list, inspect, download, import, delete)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from optimization.errors import InvalidRequest
from optimization.token_file import token_info
from workers import library, records
from workers.tokens import TokenStore

from ..deps import RedisDep, SettingsDep
from ..errors import ApiError
from ..schemas import Error, LearningTask, TokenOut

router = APIRouter(prefix="/v1/tokens", tags=["tokens"])


def _store(settings, connection) -> TokenStore:
    return TokenStore.for_settings(settings, connection)


def _out(info: dict, request: Request) -> TokenOut:
    return TokenOut(**info, links={"self": str(request.url_for("get_token", key=info["key"])),
                                   "file": str(request.url_for("token_file", key=info["key"]))})


@router.get("", response_model=list[TokenOut])
def list_tokens(request: Request, settings: SettingsDep, connection: RedisDep,
                model: Annotated[str | None, Query(description="Model id or fingerprint.")] = None,
                object: str | None = None, count: Annotated[int | None, Query(ge=1)] = None) -> list[TokenOut]:
    fingerprint = model
    if model is not None and any(m.id == model for m in settings.models):
        info = records.model_info(connection, settings, model)
        fingerprint = info["fingerprint"] if info else "unknown"
    return [_out(i, request) for i in _store(settings, connection).list(fingerprint, object, count)]


@router.get("/learning", response_model=list[LearningTask])
def learning_tasks(settings: SettingsDep, connection: RedisDep) -> list[LearningTask]:
    """Background library-learning tasks (queued, running, and recently ended), with their progress."""
    return [LearningTask(**t) for t in library.tasks(connection, settings)]


@router.delete("/learning/{key}", status_code=202, response_model=LearningTask, responses={404: {"model": Error}})
def cancel_learning(key: str, settings: SettingsDep, connection: RedisDep) -> LearningTask:
    """Stop a queued or running library task within one iteration (admin scope, once keys exist)."""
    if not library.cancel(connection, settings, key):
        raise ApiError(404, "not_found", f"no library task is queued or running for {key!r}")
    return next(LearningTask(**t) for t in library.tasks(connection, settings) if t["key"] == key)


@router.get("/{key}", response_model=TokenOut, responses={404: {"model": Error}})
def get_token(key: str, request: Request, settings: SettingsDep, connection: RedisDep) -> TokenOut:
    info = _store(settings, connection).info(key)
    if info is None:
        raise ApiError(404, "not_found", f"no token {key!r}")
    return _out(info, request)


@router.get("/{key}/file", responses={200: {"content": {"application/octet-stream": {}}}, 404: {"model": Error}})
def token_file(key: str, settings: SettingsDep, connection: RedisDep) -> Response:
    """The token as a diffusers textual-inversion safetensors file."""
    data = _store(settings, connection).get(key)
    if data is None:
        raise ApiError(404, "not_found", f"no token {key!r}")
    return Response(data, media_type="application/octet-stream",
                    headers={"Content-Disposition": f'attachment; filename="{key}.safetensors"'})


@router.post("", status_code=201, response_model=TokenOut,
             responses={413: {"model": Error}, 422: {"model": Error}},
             openapi_extra={"requestBody": {"content": {"application/octet-stream": {}}, "required": True}})
async def import_token(request: Request, settings: SettingsDep, connection: RedisDep) -> TokenOut:
    """Import a token file (the raw safetensors bytes as the body) learned for a configured model."""
    data = await request.body()
    if len(data) > settings.max_token_bytes:
        raise ApiError(413, "too_large", f"a token file is at most {settings.max_token_bytes} bytes, got {len(data)}")
    try:
        info = token_info(data)
    except InvalidRequest as exc:
        raise ApiError(422, "invalid_token", str(exc)) from None
    known = {i["fingerprint"]: m.id for m in settings.models
             if (i := records.model_info(connection, settings, m.id)) is not None}
    if info["model"] not in known:
        raise ApiError(422, "unknown_model",
                       f"the token was learned for model {info['model']}; this deployment serves "
                       f"{', '.join(f'{v} ({k})' for k, v in known.items()) or 'no model with a started worker yet'}")
    return _out(_store(settings, connection).put(data), request)


@router.delete("/{key}", status_code=204, responses={404: {"model": Error}})
def delete_token(key: str, settings: SettingsDep, connection: RedisDep) -> Response:
    if not _store(settings, connection).delete(key):
        raise ApiError(404, "not_found", f"no token {key!r}")
    return Response(status_code=204)
