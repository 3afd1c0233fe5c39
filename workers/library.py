"""Background library learning of count tokens.

- **Single flight**: one task per key, however many jobs miss it at once (an atomic lock).
- **Slices** (``runtime.slices``, in a worker): a task learns for about ``library_slice_seconds``, or until a user job of its model is queued
  (checked between iterations and generation batches), saves its optimizer state, and queues its next slice
  behind the user jobs, so a worker busy learning delays a user job by about one iteration. A slice
  interrupted by a stopping worker is queued again; the saved state loses nothing.
- **Visible and cancelable**: each task's progress is a small record (``GET /v1/tokens/learning``);
  canceling sets a flag that the running slice obeys within one iteration.
- **Hygiene**: only a token whose held-out exact rate beats the base prompt by ``library.min_gain`` enters
  the library; otherwise the key's figures are recorded and it is not learned again for
  ``library_retry_after_s``.
"""

from __future__ import annotations

import json
import logging
import time
import uuid

import redis
from rq import Callback

from . import stats
from .queue import keys, library_queue
from .settings import Settings
from .statuses import LearningStatus

log = logging.getLogger("tally.worker")


def schedule(connection: redis.Redis, settings: Settings, model_id: str, cls: str, count: int, key_id: str) -> bool:
    """Start one library task for ``key_id`` unless one runs, or its last learning found no gain recently."""
    k = keys(settings)
    if connection.exists(k.library_no_gain(key_id)):
        return False
    if not connection.set(k.library_lock(key_id), "1", nx=True, ex=settings.library_timeout):
        return False
    now = time.time()
    with connection.pipeline() as pipe:
        pipe.hset(k.learning(key_id), mapping={
            "key": key_id, "model": model_id, "object": cls, "count": count, "status": LearningStatus.queued,
            "iterations": 0, "max_iterations": settings.library.max_iterations, "slices": 0, "validation": "null",
            "created": now, "updated": now})
        pipe.expire(k.learning(key_id), settings.result_ttl)
        pipe.sadd(k.learning_index(), key_id)
        stats.add(pipe, settings, "library_tasks_started")
        stats.add(pipe, settings, "library_tasks_started", 1, key_id)
        pipe.execute()
    enqueue_slice(connection, settings, model_id, cls, count, key_id)
    return True


def enqueue_slice(connection: redis.Redis, settings: Settings, model_id: str, cls: str, count: int, key_id: str,
                  at_front: bool = False) -> None:
    library_queue(connection, settings, model_id).enqueue_call(
        "workers.runtime.tasks.library_job", kwargs={"model_id": model_id, "cls": cls, "count": count, "key_id": key_id},
        job_id=f"library-{key_id}-{uuid.uuid4().hex[:8]}", timeout=settings.library_timeout,
        result_ttl=settings.result_ttl, failure_ttl=settings.result_ttl, at_front=at_front,
        on_failure=Callback("workers.runtime.tasks.release_library_lock"), meta={"key": key_id, "kind": "library"})


def update_task(connection: redis.Redis, settings: Settings, key_id: str, **fields) -> None:
    connection.hset(keys(settings).learning(key_id), mapping={**fields, "updated": time.time()})


def conclude(connection: redis.Redis, settings: Settings, key_id: str, status: LearningStatus,
             **fields) -> dict:
    """End a task: free its key for the next miss and keep its record for the result TTL."""
    k = keys(settings)
    with connection.pipeline() as pipe:
        pipe.delete(k.library_lock(key_id), k.library_state(key_id), k.library_cancel(key_id))
        pipe.hset(k.learning(key_id), mapping={"status": status, "updated": time.time(), **fields})
        pipe.expire(k.learning(key_id), settings.result_ttl)
        pipe.execute()
    log.info("library task %s: %s", key_id, status)
    return {"key": key_id, "status": status, **fields}


def tasks(connection: redis.Redis, settings: Settings) -> list[dict]:
    """Every library task still on record, newest first."""
    k = keys(settings)
    out = []
    for key_id in sorted(m.decode() for m in connection.smembers(k.learning_index())):
        raw = connection.hgetall(k.learning(key_id))
        if not raw:
            connection.srem(k.learning_index(), key_id)  # its record expired
            continue
        record = {a.decode(): b.decode() for a, b in raw.items()}
        out.append({**record, "count": int(record["count"]), "iterations": int(record["iterations"]),
                    "max_iterations": int(record["max_iterations"]), "slices": int(record.get("slices", 0)),
                    "validation": json.loads(record.get("validation") or "null"),
                    "created": float(record["created"]), "updated": float(record["updated"]),
                    **({"gain": float(record["gain"])} if "gain" in record else {})})
    return sorted(out, key=lambda r: r["created"], reverse=True)


def cancel(connection: redis.Redis, settings: Settings, key_id: str) -> bool:
    """Ask a queued or running task to stop (its slice obeys within one iteration); False if none is."""
    k = keys(settings)
    if not connection.exists(k.library_lock(key_id)):
        return False
    connection.set(k.library_cancel(key_id), 1, ex=settings.library_timeout)
    update_task(connection, settings, key_id, status=LearningStatus.canceling)
    return True
