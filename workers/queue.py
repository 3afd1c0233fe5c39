"""Queues (RQ): one per configured model for user jobs, one per model for library learning (lower priority:
a worker listens to its user queue first), worker liveness, and what the workers published of their model.
Library tasks themselves: ``library``.
"""

from __future__ import annotations

import json
import time

import redis
from rq import Callback, Queue, Retry
from rq.job import Job

from optimization.config import ModelSpec

from .keys import Keys
from .requests import JobRequest
from .settings import Settings


def connect(settings: Settings, blocking: bool = False) -> redis.Redis:
    """A Redis client that fails fast (the API must answer 503, not hang, when Redis is away).

    ``blocking``: for workers, whose RQ dequeue blocks on Redis longer than any read timeout.
    """
    return redis.Redis.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=None if blocking else 5,
                                health_check_interval=10)


def connect_async(settings: Settings):
    """An asyncio client for the event streams: they block on Redis (XREAD) without holding a thread."""
    import redis.asyncio

    return redis.asyncio.Redis.from_url(settings.redis_url, socket_connect_timeout=2,
                                        socket_timeout=settings.sse_heartbeat_s + 10, health_check_interval=10)


# Which trouble a Redis error is, by how a caller should react: wait for memory, for a primary, for the data
# to load, or for Redis itself. Answered to API callers as the error code and counted for /metrics.
REDIS_TROUBLE = {
    "redis_full": "the job store (Redis) is full and refuses writes; reads still work; retry shortly",
    "redis_readonly": "the job store (Redis) is a read-only replica just now (a failover?); retry shortly",
    "redis_loading": "the job store (Redis) is loading its data after a restart; retry in a few seconds",
    "redis_unavailable": "the job store (Redis) is unreachable; retry shortly",
}


def redis_trouble(exc: redis.RedisError) -> str:
    """The ``REDIS_TROUBLE`` code of a Redis error."""
    if isinstance(exc, redis.exceptions.OutOfMemoryError):
        return "redis_full"
    if isinstance(exc, redis.exceptions.ReadOnlyError):
        return "redis_readonly"
    if isinstance(exc, redis.exceptions.BusyLoadingError):
        return "redis_loading"
    return "redis_unavailable"


def refuses_writes(exc: redis.RedisError) -> bool:
    """Redis answers but refuses to write (full or read-only): what needs no write can go on."""
    return redis_trouble(exc) in ("redis_full", "redis_readonly")


def keys(settings: Settings) -> Keys:
    return Keys(settings.redis_prefix)


def generation_queue(connection: redis.Redis, settings: Settings, model_id: str) -> Queue:
    return Queue(keys(settings).generation_queue(model_id), connection=connection)


def library_queue(connection: redis.Redis, settings: Settings, model_id: str) -> Queue:
    return Queue(keys(settings).library_queue(model_id), connection=connection)


# Fair dispatch: a new job goes before the first queued job that is deeper in its own owner's line than the
# new one is in its owner's, so owners alternate (A1 B1 A2 B2 A3 A4 ...) and one key flooding the queue
# delays another key's job by at most one job per flooding owner. Run in the submit's transaction, right
# after the job was pushed to the tail (so no worker can have taken it). Each owner's count of queued jobs
# (``queue_owner_counts``) makes the common case O(owners): when no other owner's line is deeper than the
# new job's, the tail is already its place and the queue is not scanned; otherwise the scan stops at the
# place found. A job without an owner entry (one put back by a retry) is in nobody's line.
# KEYS: queue, owners, owner counts; ARGV: job id, owner, TTL. Returns the new index, or -1 (the tail).
_FAIR_INSERT = """
local mine = tonumber(redis.call('HGET', KEYS[3], ARGV[2]) or '0')
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('HINCRBY', KEYS[3], ARGV[2], 1)
redis.call('EXPIRE', KEYS[2], ARGV[3])
redis.call('EXPIRE', KEYS[3], ARGV[3])
local counts, deeper = redis.call('HVALS', KEYS[3]), false
for _, n in ipairs(counts) do
  if tonumber(n) > mine + 1 then deeper = true break end
end
if not deeper then return -1 end
local depth, start, chunk = {}, 0, 256
while true do
  local ids = redis.call('LRANGE', KEYS[1], start, start + chunk - 1)
  if #ids == 0 then return -1 end
  for i, id in ipairs(ids) do
    if id == ARGV[1] then return -1 end
    local owner = redis.call('HGET', KEYS[2], id)
    if owner then
      depth[owner] = (depth[owner] or 0) + 1
      if depth[owner] > mine + 1 then
        redis.call('LREM', KEYS[1], -1, ARGV[1])
        redis.call('LINSERT', KEYS[1], 'BEFORE', id, ARGV[1])
        return start + i - 1
      end
    end
  end
  start = start + chunk
end
"""

# A job left the queue (a worker took it, or it was canceled): it no longer counts in its owner's line.
_DEQUEUED = """
local owner = redis.call('HGET', KEYS[1], ARGV[1])
if not owner then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
if redis.call('HINCRBY', KEYS[2], owner, -1) <= 0 then redis.call('HDEL', KEYS[2], owner) end
return 1
"""


def enqueue_generation(connection: redis.Redis, settings: Settings, request: JobRequest, meta: dict, job_id: str,
                       pipeline: redis.client.Pipeline) -> Job:
    """Queue a generation job on ``pipeline``, a transaction (``MULTI`` already begun) that the caller
    executes: the RQ job (a valid RQ job, as ``enqueue_call`` writes it), its place in the queue and its
    owner's line, in the caller's one round trip. The RQ job carries only its id: the request lives in the
    job's record (``records``), once."""
    queue = generation_queue(connection, settings, request.model)
    k = keys(settings)
    job = queue.enqueue_call(
        "workers.runtime.tasks.generate_job", job_id=job_id,
        timeout=settings.job_timeout, result_ttl=settings.result_ttl, failure_ttl=settings.result_ttl,
        ttl=settings.result_ttl, meta=meta, retry=Retry(max=settings.job_retries) if settings.job_retries else None,
        on_failure=Callback("workers.runtime.tasks.generation_failed"), pipeline=pipeline)
    pipeline.eval(_FAIR_INSERT, 3, queue.key, k.queue_owners(request.model), k.queue_owner_counts(request.model),
                  job_id, meta["owner"], settings.result_ttl)
    return job


def dequeued(connection: redis.Redis | redis.client.Pipeline, settings: Settings, model_id: str, job_id: str) -> None:
    """A worker took the job, or it was canceled: it no longer counts in its owner's line."""
    k = keys(settings)
    connection.eval(_DEQUEUED, 2, k.queue_owners(model_id), k.queue_owner_counts(model_id), job_id)


def beat(connection: redis.Redis | redis.client.Pipeline, settings: Settings, model_id: str, name: str,
         info: str, ttl: int) -> None:
    """A worker's heartbeat: its key (``info``: name, host, pid) for ``ttl`` seconds, and its place in the
    model's index of workers, scored by when the beat lapses (what ``live_workers`` reads)."""
    k, now = keys(settings), time.time()
    connection.set(k.worker(model_id, name), info, ex=ttl)
    connection.zadd(k.model_workers(model_id), {name: now + ttl})
    connection.zremrangebyscore(k.model_workers(model_id), 0, now)
    connection.expire(k.model_workers(model_id), ttl)


def unregister(connection: redis.Redis, settings: Settings, model_id: str, name: str) -> None:
    k = keys(settings)
    connection.delete(k.worker(model_id, name))
    connection.zrem(k.model_workers(model_id), name)


def live_workers(connection: redis.Redis, settings: Settings, model_id: str) -> list[str]:
    """Names of the workers of a model whose heartbeat has not lapsed: one read of the model's index (a scan
    of the keyspace would cost as much as the keyspace is large, on every status read)."""
    lapse = keys(settings).model_workers(model_id)
    return sorted(n.decode() for n in connection.zrangebyscore(lapse, time.time(), "+inf"))


def queue_depth(connection: redis.Redis, settings: Settings, model_id: str) -> int:
    return len(generation_queue(connection, settings, model_id))


def model_info(connection: redis.Redis, settings: Settings, model_id: str) -> dict | None:
    """What the model's workers published at start (fingerprint, detector classes ...); None before any did."""
    raw = connection.get(keys(settings).model_info(model_id))
    return json.loads(raw) if raw else None


def model_classes(connection: redis.Redis, settings: Settings, spec: ModelSpec) -> list[str] | None:
    """The model's detector classes: from its configuration, else as its workers published them."""
    if spec.classes is not None:
        return spec.classes
    info = model_info(connection, settings, spec.id)
    return info["classes"] if info else None
