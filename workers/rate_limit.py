"""Per-key rate limits: a moving window per key in Redis, checked with the key's record in one round trip."""

from __future__ import annotations

import functools
import hashlib
import time
from typing import TYPE_CHECKING

import redis

from .keys import Keys
from .settings import Settings

if TYPE_CHECKING:
    from .auth import ApiKey


class KeyRefused(Exception):
    """The key's record is no longer in Redis, or it was revoked."""


# The ``limits`` library's moving window (acquire_moving_window.lua: a list of hit times, newest first, at
# most ``limit`` long; a hit is refused while the limit-th newest is inside the window), after checking the
# key's record: one round trip admits a request. KEYS: key records, the key's window; ARGV: key hash, now,
# limit, window seconds. Returns {0} refused key, {1} admitted, {2, oldest hit} over the limit.
_ADMIT = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw or cjson.decode(raw)['revoked'] then return {0} end
local now, limit, window = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local oldest = redis.call('LINDEX', KEYS[2], limit - 1)
if oldest and tonumber(oldest) >= now - window then return {2, oldest} end
redis.call('LPUSH', KEYS[2], ARGV[2])
redis.call('LTRIM', KEYS[2], 0, limit - 1)
redis.call('EXPIRE', KEYS[2], window)
return {1}
"""
_ADMIT_SHA = hashlib.sha1(_ADMIT.encode()).hexdigest()


class RateLimited(Exception):
    def __init__(self, limit: str, message: str, retry_after: int):
        super().__init__(message)
        self.limit, self.retry_after = limit, retry_after


@functools.lru_cache(maxsize=256)
def _rate(text: str):
    from limits import parse

    return parse(text)


class Limiter:
    """Per-key request rate, a moving window on Redis (``_ADMIT``), and the key's liveness in the same
    round trip."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.keys = Keys(settings.redis_prefix)

    def hit(self, connection: redis.Redis, key: ApiKey) -> None:
        """Count a request of ``key``; raise ``RateLimited`` past its rate, ``KeyRefused`` if it is gone."""
        rate = _rate(key.rate_limit or self.settings.rate_limit)
        window = rate.get_expiry()
        args = (2, self.keys.api_keys(), self.keys.rate_window(key.id), key.hash, repr(time.time()), rate.amount, window)
        try:
            reply = connection.evalsha(_ADMIT_SHA, *args)
        except redis.exceptions.NoScriptError:
            reply = connection.eval(_ADMIT, *args)
        if reply[0] == 0:
            raise KeyRefused(key.id)
        if reply[0] == 2:
            raise RateLimited("rate_limit", f"rate limit of {rate} for this key reached",
                              max(1, int(float(reply[1]) + window - time.time()) + 1))
