"""Dependencies injected into routes: settings, the Redis connection, the caller's identity."""

from __future__ import annotations

import hashlib
from typing import Annotated

import redis
from fastapi import Depends, Header, Request

from workers.settings import Settings


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_redis(request: Request) -> redis.Redis:
    return request.app.state.redis


def get_owner(x_api_key: Annotated[str | None, Header()] = None) -> str:
    """The owner of the jobs a caller creates and sees. API keys and quotas are coming; until then every
    caller without a key is "anonymous", and a key (not yet checked) already separates owners."""
    if not x_api_key:
        return "anonymous"
    return "key-" + hashlib.sha256(x_api_key.encode()).hexdigest()[:16]


SettingsDep = Annotated[Settings, Depends(get_settings)]
RedisDep = Annotated[redis.Redis, Depends(get_redis)]
OwnerDep = Annotated[str, Depends(get_owner)]
