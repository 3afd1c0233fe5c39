"""API keys and what each key may do: scope, rate limit, active jobs, budget ceiling.

A key is shown once, when it is created; only its SHA-256 is kept, in Redis (fast, shared by every API
replica) and in a durable file (``Settings.keys_path``) that re-seeds Redis, so a Redis flush locks nobody
out. Jobs belong to the key's id (``key:<id>``), so another key's job is simply not found.

Per request, auth costs one Redis round trip (``admit``): a verified key is remembered in the process for
``VERIFIED_CACHE_S`` seconds, and the rate limiter's script (the ``limits`` library's moving window, on the
same Redis) checks in that same round trip that the key is still there and not revoked, so a revocation
takes effect at once on every API process.
"""

from __future__ import annotations

import functools
import hashlib
import json
import secrets
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Literal

import redis

from optimization.config import Budget
from optimization.errors import InvalidRequest
from optimization.token_file import write_atomic

from .keys import Keys
from .settings import Settings

Scope = Literal["user", "admin"]
SCOPES = ("user", "admin")


@dataclass
class ApiKey:
    id: str
    name: str
    scope: Scope
    created: float
    hash: str = field(repr=False)
    revoked: bool = False
    rate_limit: str | None = None  # None: the deployment's rate_limit
    max_active_jobs: int | None = None  # None: the deployment's max_active_jobs
    max_budget: dict | None = None  # None: the deployment's max_budget

    @property
    def owner(self) -> str:
        return f"key:{self.id}"

    def public(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "hash"}


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


VERIFIED_CACHE_S = 5.0


class KeyStore:
    def __init__(self, connection: redis.Redis, settings: Settings):
        self.redis, self.settings = connection, settings
        self.index = Keys(settings.redis_prefix).api_keys()
        self._verified: dict[str, tuple[float, ApiKey]] = {}  # hash -> (until, key): live keys seen lately

    def _records(self) -> dict[str, ApiKey]:
        path = self.settings.keys_path
        if not path.is_file():
            return {}
        return {r["hash"]: ApiKey(**r) for r in json.loads(path.read_text())}

    def _save(self, records: dict[str, ApiKey]) -> None:
        write_atomic(self.settings.keys_path, json.dumps([asdict(r) for r in records.values()], indent=1).encode())
        self.reseed(records)

    def reseed(self, records: dict[str, ApiKey] | None = None) -> int:
        """Redis mirrors the file (revoked keys included, so they stay refused); without Redis, the file
        alone holds the change and the API re-seeds from it when it starts."""
        records = self._records() if records is None else records
        try:
            with self.redis.pipeline() as pipe:
                pipe.delete(self.index)
                if records:
                    pipe.hset(self.index, mapping={h: json.dumps(asdict(r)) for h, r in records.items()})
                pipe.execute()
        except redis.ConnectionError:
            pass
        return len(records)

    def create(self, name: str, scope: Scope = "user", rate_limit: str | None = None,
               max_active_jobs: int | None = None, max_budget: Budget | None = None) -> tuple[str, ApiKey]:
        """A new key: returns the secret (shown this once) and its record."""
        if scope not in SCOPES:
            raise InvalidRequest(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}")
        if not name.strip() or len(name) > 64:
            raise InvalidRequest("name: 1 to 64 characters")
        if rate_limit is not None:
            from limits import parse

            try:
                parse(rate_limit)
            except ValueError:
                raise InvalidRequest(f"rate limit {rate_limit!r} is not like '60/minute'") from None
        secret = "tally_" + secrets.token_urlsafe(32)
        record = ApiKey(id=uuid.uuid4().hex[:12], name=name, scope=scope, created=round(time.time(), 3),
                        hash=_hash(secret), rate_limit=rate_limit, max_active_jobs=max_active_jobs,
                        max_budget=max_budget.model_dump() if max_budget else None)
        records = self._records()
        records[record.hash] = record
        self._save(records)
        return secret, record

    def ensure(self, secret: str, name: str, scope: Scope = "admin") -> ApiKey:
        """Accept a key given from outside (a deployment's secret file): recorded once, by its hash."""
        records = self._records()
        if _hash(secret) not in records:
            records[_hash(secret)] = ApiKey(id=uuid.uuid4().hex[:12], name=name, scope=scope,
                                            created=round(time.time(), 3), hash=_hash(secret))
            self._save(records)
        return records[_hash(secret)]

    def list(self) -> list[ApiKey]:
        return sorted(self._records().values(), key=lambda r: r.created)

    def revoke(self, id_or_name: str) -> list[ApiKey]:
        records = self._records()
        hit = [r for r in records.values() if not r.revoked and id_or_name in (r.id, r.name)]
        for r in hit:
            r.revoked = True
        if hit:
            self._save(records)
        return hit

    def verify(self, secret: str, fresh: bool = False) -> ApiKey | None:
        """The live key with this secret, or None. A live key is remembered for ``VERIFIED_CACHE_S``
        seconds (no round trip then): a key revoked meanwhile still passes here until then, so callers that
        must refuse it at once also ``Limiter.hit`` it (``admit``). ``fresh``: ask Redis regardless."""
        digest = _hash(secret)
        seen = None if fresh else self._verified.get(digest)
        if seen is not None and seen[0] > time.monotonic():
            return seen[1]
        key = self._lookup(secret)
        if key is None:
            self._verified.pop(digest, None)
        else:
            if len(self._verified) > 10_000:  # only live keys enter; a deployment has far fewer
                self._verified.clear()
            self._verified[digest] = (time.monotonic() + VERIFIED_CACHE_S, key)
        return key

    def _lookup(self, secret: str) -> ApiKey | None:
        raw = self.redis.hget(self.index, _hash(secret))
        if raw is None and not self.redis.exists(self.index) and self.settings.keys_path.is_file():
            self.reseed()  # Redis lost its copy: the file is the truth
            raw = self.redis.hget(self.index, _hash(secret))
        if raw is None:
            return None
        key = ApiKey(**json.loads(raw))
        return None if key.revoked else key


class RateLimited(Exception):
    def __init__(self, limit: str, message: str, retry_after: int):
        super().__init__(message)
        self.limit, self.retry_after = limit, retry_after


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


def admit(connection: redis.Redis, keys: KeyStore, limiter: Limiter, secret: str) -> ApiKey | None:
    """The live key with this secret, its request counted (``RateLimited`` past its rate), or None: one
    round trip while the key is remembered, and a revoked key is refused at once."""
    key = keys.verify(secret)
    if key is None:
        return None
    try:
        limiter.hit(connection, key)
    except KeyRefused:
        key = keys.verify(secret, fresh=True)  # revoked, or Redis lost its copy (``verify`` re-seeds it)
        if key is None:
            return None
        try:
            limiter.hit(connection, key)
        except KeyRefused:
            return None
    return key
