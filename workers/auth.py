"""API keys and what each key may do: scope, rate limit, active jobs, budget ceiling.

A key is shown once, when it is created; only its SHA-256 is kept, in Redis (fast, shared by every API
replica) and in a durable file (``Settings.keys_path``) that re-seeds Redis, so a Redis flush locks nobody
out. Jobs belong to the key's id (``key:<id>``), so another key's job is simply not found. Rate limits use
the ``limits`` library's moving window on the same Redis.
"""

from __future__ import annotations

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


class KeyStore:
    def __init__(self, connection: redis.Redis, settings: Settings):
        self.redis, self.settings = connection, settings
        self.index = Keys(settings.redis_prefix).api_keys()

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

    def verify(self, secret: str) -> ApiKey | None:
        """The live key with this secret, or None."""
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


class Limiter:
    """Per-key request rate (moving window) on Redis, with the ``limits`` library."""

    def __init__(self, settings: Settings):
        from limits.storage import RedisStorage
        from limits.strategies import MovingWindowRateLimiter

        self.settings = settings
        self.limiter = MovingWindowRateLimiter(RedisStorage(settings.redis_url, key_prefix=f"{settings.redis_prefix}-limits"))

    def hit(self, key: ApiKey) -> None:
        from limits import parse

        rate = parse(key.rate_limit or self.settings.rate_limit)
        if not self.limiter.hit(rate, key.id):
            reset, _ = self.limiter.get_window_stats(rate, key.id)
            raise RateLimited("rate_limit", f"rate limit of {rate} for this key reached",
                              max(1, int(reset - time.time()) + 1))
