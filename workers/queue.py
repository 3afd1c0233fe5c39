"""Queues (RQ): one per configured model for user jobs, one per model for library learning (lower priority:
a worker listens to its user queue first), the single-flight rule for library tasks, and worker liveness.
"""

from __future__ import annotations

import uuid

import redis
from rq import Callback, Queue, Retry

from .keys import Keys
from .requests import JobRequest
from .settings import Settings


def connect(settings: Settings, blocking: bool = False) -> redis.Redis:
    """A Redis client that fails fast (the API must answer 503, not hang, when Redis is away).

    ``blocking``: for workers, whose RQ dequeue blocks on Redis longer than any read timeout.
    """
    return redis.Redis.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=None if blocking else 5,
                                health_check_interval=10)


def keys(settings: Settings) -> Keys:
    return Keys(settings.redis_prefix)


def generation_queue(connection: redis.Redis, settings: Settings, model_id: str) -> Queue:
    return Queue(keys(settings).generation_queue(model_id), connection=connection)


def library_queue(connection: redis.Redis, settings: Settings, model_id: str) -> Queue:
    return Queue(keys(settings).library_queue(model_id), connection=connection)


def schedule_library(connection: redis.Redis, settings: Settings, model_id: str, cls: str, count: int,
                     key_id: str) -> bool:
    """Start one library-learning task for ``key_id`` unless one is already queued or running.

    Single flight: the lock is taken atomically (SET NX) and released when the task ends, fails or is
    abandoned by a dead worker (RQ runs the failure callback then); its TTL is the last resort.
    """
    k = keys(settings)
    job_id = f"library-{key_id}-{uuid.uuid4().hex[:8]}"
    if not connection.set(k.library_lock(key_id), job_id, nx=True, ex=settings.library_timeout + 60):
        return False
    library_queue(connection, settings, model_id).enqueue_call(
        "workers.tasks.library_job", kwargs={"model_id": model_id, "cls": cls, "count": count, "key_id": key_id},
        job_id=job_id, timeout=settings.library_timeout, result_ttl=settings.result_ttl,
        failure_ttl=settings.result_ttl, on_failure=Callback("workers.tasks.release_library_lock"),
        meta={"key": key_id, "kind": "library"})
    with connection.pipeline() as pipe:
        pipe.hincrby(k.metrics(), "library_tasks_started", 1)
        pipe.hincrby(k.metrics(), f"library_tasks_started:{key_id}", 1)
        pipe.execute()
    return True


def enqueue_generation(connection: redis.Redis, settings: Settings, request: JobRequest, meta: dict,
                       job_id: str) -> None:
    generation_queue(connection, settings, request.model).enqueue_call(
        "workers.tasks.generate_job", kwargs={"request": request.model_dump(mode="json")}, job_id=job_id,
        timeout=settings.job_timeout, result_ttl=settings.result_ttl, failure_ttl=settings.result_ttl,
        ttl=settings.result_ttl, meta=meta, retry=Retry(max=settings.job_retries) if settings.job_retries else None)


def live_workers(connection: redis.Redis, settings: Settings, model_id: str) -> list[str]:
    """Names of the workers of a model whose heartbeat has not expired."""
    return sorted(k.decode().rsplit(":", 1)[-1] for k in connection.scan_iter(keys(settings).workers(model_id)))
