"""API keys and what each key may do: scope, rate limit, active jobs, budget ceiling.

A key is shown once, when it is created; only its SHA-256 is kept, in Redis (the truth, shared by every API
replica) and in a snapshot file (``Settings.keys_path``) that re-seeds Redis, so a Redis flush locks nobody
out; changes merge so that a revocation is final (``KeyStore``). Jobs belong to the key's id (``key:<id>``),
so another key's job is simply not found.

Per request, auth costs one Redis round trip (``admit``): a verified key is remembered in the process for
``VERIFIED_CACHE_S`` seconds, and the rate limiter's script (the ``limits`` library's moving window, on the
same Redis) checks in that same round trip that the key is still there and not revoked, so a revocation
takes effect at once on every API process.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import secrets
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Literal

import redis

from optimization.config import Budget
from optimization.errors import InvalidRequest
from optimization.token_file import write_atomic

from .keys import Keys
from .queue import refuses_writes
from .rate_limit import KeyRefused, Limiter
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
    """Key records, kept so that no change can be undone by another (``_merge``).

    Redis is the truth the API reads (one place every API host shares; run it with AOF); the file
    (``Settings.keys_path``) is a snapshot written under a lock after every change, so a flushed Redis is
    re-seeded from it and a change made while Redis is away reaches Redis at the next start. Keys are only
    ever added or revoked, never edited or un-revoked, so merging two copies is a union in which revoked
    wins: the file, Redis, two CLIs and two API processes can race in any order and still agree.
    """

    def __init__(self, connection: redis.Redis, settings: Settings):
        self.redis, self.settings = connection, settings
        self.index = Keys(settings.redis_prefix).api_keys()
        self._verified: dict[str, tuple[float, ApiKey]] = {}  # hash -> (until, key): live keys seen lately

    def _file_records(self) -> dict[str, ApiKey]:
        path = self.settings.keys_path
        if not path.is_file():
            return {}
        return {r["hash"]: ApiKey(**r) for r in json.loads(path.read_text())}

    def _redis_records(self) -> dict[str, ApiKey]:
        return {h.decode(): ApiKey(**json.loads(raw)) for h, raw in self.redis.hgetall(self.index).items()}

    def _to_redis(self, records: dict[str, ApiKey]) -> None:
        """Merge into Redis: a live record never replaces an existing one (HSETNX), a revoked one always
        does (HSET), so whatever order writers arrive in, a revocation stays."""
        if not records:
            return
        with self.redis.pipeline(transaction=False) as pipe:
            for digest, record in records.items():
                (pipe.hset if record.revoked else pipe.hsetnx)(self.index, digest, json.dumps(asdict(record)))
            pipe.execute()

    @contextmanager
    def _file_lock(self):
        path = self.settings.keys_path
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_name(path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # every writer of this file on this host, processes and threads
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _change(self, changed: dict[str, ApiKey]) -> None:
        """Record ``changed`` in Redis, then snapshot Redis and the file, merged, into the file. Without
        Redis the file alone holds the change (``reseed`` brings it over when the API starts)."""
        try:
            self._to_redis(changed)
            current = self._redis_records()
        except redis.ConnectionError:
            current = {}
        with self._file_lock():
            merged = _merge(_merge(self._file_records(), current), changed)
            write_atomic(self.settings.keys_path,
                         json.dumps([asdict(r) for r in merged.values()], indent=1).encode(), mode=0o600)

    def reseed(self) -> int:
        """Bring the file's keys and revocations into Redis (a flushed Redis, changes made while it was
        away); merging never removes a key or lifts a revocation. Returns how many keys Redis knows."""
        records = self._file_records()  # whole, as written (``write_atomic``): reading needs no lock
        try:
            self._to_redis(records)
            return self.redis.hlen(self.index)
        except redis.ConnectionError:
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
        self._change({record.hash: record})
        return secret, record

    def ensure(self, secret: str, name: str, scope: Scope = "admin") -> ApiKey:
        """Accept a key given from outside (a deployment's secret file): recorded once, by its hash."""
        digest = _hash(secret)
        known = self._records().get(digest)
        if known is None:
            self._change({digest: ApiKey(id=uuid.uuid4().hex[:12], name=name, scope=scope,
                                         created=round(time.time(), 3), hash=digest)})
            known = self._records()[digest]  # a concurrent ``ensure`` of the same secret may have won
        return known

    def _records(self) -> dict[str, ApiKey]:
        """Every key as the API sees it: Redis and the file merged (the file alone without Redis)."""
        try:
            current = self._redis_records()
        except redis.ConnectionError:
            current = {}
        return _merge(self._file_records(), current)

    def list(self) -> list[ApiKey]:
        return sorted(self._records().values(), key=lambda r: r.created)

    def revoke(self, id_or_name: str) -> list[ApiKey]:
        hit = [r for r in self._records().values() if not r.revoked and id_or_name in (r.id, r.name)]
        for r in hit:
            r.revoked = True
        if hit:
            self._change({r.hash: r for r in hit})
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
            self.reseed()  # Redis lost its copy (a flush): the file's snapshot brings the keys back
            raw = self.redis.hget(self.index, _hash(secret))
        if raw is None:
            return None
        key = ApiKey(**json.loads(raw))
        return None if key.revoked else key


def _merge(base: dict[str, ApiKey], other: dict[str, ApiKey]) -> dict[str, ApiKey]:
    """The union of two copies of the key records; where both hold a key, a revoked copy wins, else the
    first copy (a key's fields never change after creation)."""
    merged = dict(base)
    for digest, record in other.items():
        if digest not in merged or (record.revoked and not merged[digest].revoked):
            merged[digest] = record
    return merged


def admit(connection: redis.Redis, keys: KeyStore, limiter: Limiter, secret: str) -> ApiKey | None:
    """The live key with this secret, its request counted (``RateLimited`` past its rate), or None: one
    round trip while the key is remembered, and a revoked key is refused at once."""
    key = keys.verify(secret)
    if key is None:
        return None
    try:
        limiter.hit(connection, key)
    except redis.RedisError as exc:
        if not refuses_writes(exc):
            raise
        # Redis answers but will not count the request (full, read-only): admit a live key uncounted, so
        # that reads go on; every write the request then tries is refused with the trouble named.
        return keys.verify(secret, fresh=True)
    except KeyRefused:
        key = keys.verify(secret, fresh=True)  # revoked, or Redis lost its copy (``verify`` re-seeds it)
        if key is None:
            return None
        try:
            limiter.hit(connection, key)
        except KeyRefused:
            return None
    return key
