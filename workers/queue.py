"""Queues (RQ): one per configured model for user jobs, one per model for library learning (lower priority:
a worker listens to its user queue first), and worker liveness. Library tasks themselves: ``library``.
"""

from __future__ import annotations

import redis
from rq import Queue, Retry

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


def keys(settings: Settings) -> Keys:
    return Keys(settings.redis_prefix)


def generation_queue(connection: redis.Redis, settings: Settings, model_id: str) -> Queue:
    return Queue(keys(settings).generation_queue(model_id), connection=connection)


def library_queue(connection: redis.Redis, settings: Settings, model_id: str) -> Queue:
    return Queue(keys(settings).library_queue(model_id), connection=connection)


# Fair dispatch: a new job goes before the first queued job that is deeper in its own owner's line than the
# new one is in its owner's, so owners alternate (A1 B1 A2 B2 A3 A4 ...) and one key flooding the queue
# delays another key's job by at most one job per flooding owner. Atomic, and a job a worker already took
# is never pushed again.
_FAIR_INSERT = """
local ids = redis.call('LRANGE', KEYS[1], 0, -1)
local present, mine = false, 0
for _, id in ipairs(ids) do
  if id == ARGV[1] then present = true
  elseif redis.call('HGET', KEYS[2], id) == ARGV[2] then mine = mine + 1 end
end
if not present then return -2 end
local depth = {}
for i, id in ipairs(ids) do
  if id ~= ARGV[1] then
    local owner = redis.call('HGET', KEYS[2], id) or ''
    depth[owner] = (depth[owner] or 0) + 1
    if depth[owner] > mine + 1 then
      redis.call('LREM', KEYS[1], 1, ARGV[1])
      redis.call('LINSERT', KEYS[1], 'BEFORE', id, ARGV[1])
      return i - 1
    end
  end
end
return -1
"""


def enqueue_generation(connection: redis.Redis, settings: Settings, request: JobRequest, meta: dict,
                       job_id: str) -> None:
    queue = generation_queue(connection, settings, request.model)
    owners = keys(settings).queue_owners(request.model)
    with connection.pipeline() as pipe:
        pipe.hset(owners, job_id, meta["owner"])
        pipe.expire(owners, settings.result_ttl)
        pipe.execute()
    queue.enqueue_call(
        "workers.tasks.generate_job", kwargs={"request": request.model_dump(mode="json")}, job_id=job_id,
        timeout=settings.job_timeout, result_ttl=settings.result_ttl, failure_ttl=settings.result_ttl,
        ttl=settings.result_ttl, meta=meta, retry=Retry(max=settings.job_retries) if settings.job_retries else None)
    connection.eval(_FAIR_INSERT, 2, queue.key, owners, job_id, meta["owner"])


def dequeued(connection: redis.Redis, settings: Settings, model_id: str, job_id: str) -> None:
    """A worker took the job: it no longer counts in its owner's line."""
    connection.hdel(keys(settings).queue_owners(model_id), job_id)


def live_workers(connection: redis.Redis, settings: Settings, model_id: str) -> list[str]:
    """Names of the workers of a model whose heartbeat has not expired."""
    return sorted(k.decode().rsplit(":", 1)[-1] for k in connection.scan_iter(keys(settings).workers(model_id)))
