"""Dependencies injected into routes: settings, the Redis connection, the caller (key, scope, owner).

Auth (``Settings.auth``): ``required`` — every route but health and docs needs an API key, sent as
``Authorization: Bearer <key>`` (or ``X-API-Key``): 401 without a valid one, 403 with the wrong scope,
429 past the key's rate limit. ``off`` — loopback development: no key is checked, and the ``X-API-Key``
value (if any) only separates owners.

The dependencies are ``async``: the trivial ones so that FastAPI runs them without a thread hop each, and
``get_caller`` because its one Redis round trip (``auth.admit``) costs less inline than a hop to the thread
pool and back (Redis is local or near; its client fails fast, ``queue.connect``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Annotated

import redis
from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from workers import stats
from workers.auth import ApiKey, admit
from workers.rate_limit import RateLimited
from workers.settings import Settings

from .errors import ApiError
from .schemas import Error


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_redis(request: Request) -> redis.Redis:
    return request.app.state.redis


SettingsDep = Annotated[Settings, Depends(get_settings)]
RedisDep = Annotated[redis.Redis, Depends(get_redis)]


@dataclass
class Caller:
    owner: str  # whose jobs these are: "key:<id>" (or, with auth off, derived from X-API-Key)
    scope: str  # "user" or "admin"
    key: ApiKey | None  # None with auth off


def reject(connection: redis.Redis, settings: Settings, status: int, code: str, message: str,
            headers: dict | None = None) -> ApiError:
    """An ApiError for a refused caller, counted by reason for /metrics."""
    try:
        stats.add(connection, settings, "rejected", 1, code)
    except redis.RedisError:
        pass  # the refusal stands whether or not Redis takes the count (it may be full)
    return ApiError(status, code, message, headers)


# The two ways to send a key, declared as OpenAPI security schemes: /docs gets its Authorize button and
# generated clients send the key. They only read the headers (auto_error off); ``get_caller`` decides.
BEARER = HTTPBearer(auto_error=False, scheme_name="bearer", description="Authorization: Bearer <key>")
API_KEY = APIKeyHeader(name="X-API-Key", auto_error=False, scheme_name="apiKey", description="X-API-Key: <key>")


async def get_caller(request: Request, settings: SettingsDep, connection: RedisDep,
                     bearer: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)] = None,
                     x_api_key: Annotated[str | None, Security(API_KEY)] = None) -> Caller:
    secret = bearer.credentials.strip() if bearer else x_api_key
    if settings.auth == "off":
        owner = "key-" + hashlib.sha256(secret.encode()).hexdigest()[:16] if secret else "anonymous"
        return Caller(owner, "admin", None)
    if not secret:
        raise reject(connection, settings, 401, "unauthorized", "an API key is required: send 'Authorization: "
                      "Bearer <key>' (an operator creates keys with `tally keys create`)", {"WWW-Authenticate": "Bearer"})
    try:
        key = admit(connection, request.app.state.keys, request.app.state.limiter, secret)
    except RateLimited as exc:
        raise reject(connection, settings, 429, "rate_limited", f"{exc} ({exc.limit}); retry after {exc.retry_after} s",
                      {"Retry-After": str(exc.retry_after)}) from None
    if key is None:
        raise reject(connection, settings, 401, "unauthorized", "unknown or revoked API key",
                      {"WWW-Authenticate": "Bearer"})
    return Caller(key.owner, key.scope, key)


CallerDep = Annotated[Caller, Depends(get_caller)]


async def get_owner(caller: CallerDep) -> str:
    return caller.owner


def require_admin(caller: CallerDep, settings: SettingsDep, connection: RedisDep) -> Caller:
    if caller.scope != "admin":
        raise reject(connection, settings, 403, "forbidden", "this needs an admin key (writing the shared token "
                      "library, stopping library learning)")
    return caller


AUTH_ERRORS = {401: {"model": Error, "description": "No valid API key."},
               429: {"model": Error, "description": "The key's rate limit or quota; see Retry-After."}}
OwnerDep = Annotated[str, Depends(get_owner)]
AdminDep = Annotated[Caller, Depends(require_admin)]
