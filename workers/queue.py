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


def enqueue_generation(connection: redis.Redis, settings: Settings, request: JobRequest, meta: dict,
                       job_id: str) -> None:
    generation_queue(connection, settings, request.model).enqueue_call(
        "workers.tasks.generate_job", kwargs={"request": request.model_dump(mode="json")}, job_id=job_id,
        timeout=settings.job_timeout, result_ttl=settings.result_ttl, failure_ttl=settings.result_ttl,
        ttl=settings.result_ttl, meta=meta, retry=Retry(max=settings.job_retries) if settings.job_retries else None)


def live_workers(connection: redis.Redis, settings: Settings, model_id: str) -> list[str]:
    """Names of the workers of a model whose heartbeat has not expired."""
    return sorted(k.decode().rsplit(":", 1)[-1] for k in connection.scan_iter(keys(settings).workers(model_id)))
