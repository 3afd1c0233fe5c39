"""/v1/me: the caller as the API sees it, so that a client (the web page) can show what the key may do
instead of offering actions that would end in 403."""

from __future__ import annotations

from fastapi import APIRouter

from workers import webhooks

from ..deps import AUTH_ERRORS, CallerDep, RedisDep, SettingsDep
from ..schemas import Me

router = APIRouter(prefix="/v1/me", tags=["me"], responses=AUTH_ERRORS)


@router.get("", response_model=Me)
def who_am_i(caller: CallerDep, settings: SettingsDep, connection: RedisDep) -> Me:
    """The calling key: its owner, scope and name, whether this deployment checks keys at all, and the
    secret its webhooks are signed with.

    Scope: any key."""
    return Me(owner=caller.owner, scope=caller.scope, name=caller.key.name if caller.key else None,
              auth=settings.auth, webhook_secret=webhooks.owner_secret(connection, settings, caller.owner))
