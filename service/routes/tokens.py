"""/v1/tokens: the library of count tokens (list, inspect, download, import, delete)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from optimization.errors import InvalidRequest
from optimization.token_file import token_info, validate_token
from workers import library
from workers.queue import model_info
from workers.tokens import TokenStore

from ..deps import AUTH_ERRORS, AdminDep, RedisDep, SettingsDep, get_caller
from ..errors import ApiError
from ..links import token_links
from ..schemas import Error, LearningTask, TokenOut

router = APIRouter(prefix="/v1/tokens", tags=["tokens"], dependencies=[Depends(get_caller)], responses=AUTH_ERRORS)


def _store(settings, connection) -> TokenStore:
    return TokenStore.for_settings(settings, connection)


def _out(info: dict, request: Request) -> TokenOut:
    return TokenOut(**info, links=token_links(request, info["key"]))


@router.get("", response_model=list[TokenOut])
def list_tokens(request: Request, settings: SettingsDep, connection: RedisDep,
                model: Annotated[str | None, Query(description="Model id or fingerprint.")] = None,
                object: str | None = None, count: Annotated[int | None, Query(ge=1)] = None) -> list[TokenOut]:
    """The token library, filtered by model (id or fingerprint), object and count.

    Scope: any key."""
    fingerprint = model
    if model is not None and any(m.id == model for m in settings.models):
        info = model_info(connection, settings, model)
        fingerprint = info["fingerprint"] if info else "unknown"
    return [_out(i, request) for i in _store(settings, connection).list(fingerprint, object, count)]


@router.get("/learning", response_model=list[LearningTask])
def learning_tasks(settings: SettingsDep, connection: RedisDep) -> list[LearningTask]:
    """Background library-learning tasks (queued, running, and recently ended), with their progress.

    Scope: any key.
    """
    return [LearningTask(**t) for t in library.tasks(connection, settings)]


@router.delete("/learning/{key}", status_code=202, response_model=LearningTask, responses={404: {"model": Error}})
def cancel_learning(key: str, settings: SettingsDep, connection: RedisDep, _: AdminDep) -> LearningTask:
    """Stop a queued or running library task within one iteration.

    Scope: admin.
    """
    if not library.cancel(connection, settings, key):
        raise ApiError(404, "not_found", f"no library task is queued or running for {key!r}")
    return next(LearningTask(**t) for t in library.tasks(connection, settings) if t["key"] == key)


@router.get("/{key}", response_model=TokenOut, responses={404: {"model": Error}})
def get_token(key: str, request: Request, settings: SettingsDep, connection: RedisDep) -> TokenOut:
    """One token's key, tensors and metadata (validation figures).

    Scope: any key."""
    info = _store(settings, connection).info(key)
    if info is None:
        raise ApiError(404, "not_found", f"no token {key!r}")
    return _out(info, request)


@router.get("/{key}/file", responses={200: {"content": {"application/octet-stream": {}}}, 404: {"model": Error}})
def token_file(key: str, settings: SettingsDep, connection: RedisDep) -> Response:
    """The token as a diffusers textual-inversion safetensors file.

    Scope: any key.
    """
    data = _store(settings, connection).get(key)
    if data is None:
        raise ApiError(404, "not_found", f"no token {key!r}")
    return Response(data, media_type="application/octet-stream",
                    headers={"Content-Disposition": f'attachment; filename="{key}.safetensors"'})


@router.post("", status_code=201, response_model=TokenOut,
             responses={413: {"model": Error}, 422: {"model": Error}},
             openapi_extra={"requestBody": {"required": True, "content": {
                 "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}})
async def import_token(request: Request, settings: SettingsDep, connection: RedisDep, _: AdminDep) -> TokenOut:
    """Import a token file (the raw safetensors bytes as the body) learned for a configured model.

    Scope: admin.
    """
    data = bytearray()
    async for chunk in request.stream():  # read no further than a token file may be
        data += chunk
        if len(data) > settings.max_token_bytes:
            raise ApiError(413, "too_large", f"a token file is at most {settings.max_token_bytes} bytes")
    return _out(await run_in_threadpool(_import, settings, connection, bytes(data)), request)


def _import(settings, connection, data: bytes) -> dict:
    """Validate the file whole for the model its fingerprint names, then store it; nothing is written before."""
    try:
        claimed = token_info(data)
    except InvalidRequest as exc:
        raise ApiError(422, "invalid_token", str(exc)) from None
    published = {m.id: i for m in settings.models if (i := model_info(connection, settings, m.id)) is not None}
    spec = next((m for m in settings.models if published.get(m.id, {}).get("fingerprint") == claimed["model"]), None)
    if spec is None:
        serves = ", ".join(f"{k} ({i['fingerprint']})" for k, i in published.items())
        raise ApiError(422, "unknown_model", f"the token was learned for model {claimed['model']}; this deployment "
                                             f"serves {serves or 'no model with a started worker yet'}")
    info = published[spec.id]
    try:
        validate_token(data, spec.classes if spec.classes is not None else info.get("classes"), spec.max_count,
                       dims=info.get("dims"), family=info.get("family"), max_norms=info.get("token_norm_bounds"),
                       crowd_words=[spec.crowd_word] if spec.crowd_word else [])
    except InvalidRequest as exc:
        raise ApiError(422, "invalid_token", str(exc)) from None
    return _store(settings, connection).put(data)


@router.delete("/{key}", status_code=204, responses={404: {"model": Error}})
def delete_token(key: str, settings: SettingsDep, connection: RedisDep, _: AdminDep) -> Response:
    """Remove a token from the library.

    Scope: admin."""
    if not _store(settings, connection).delete(key):
        raise ApiError(404, "not_found", f"no token {key!r}")
    return Response(status_code=204)
