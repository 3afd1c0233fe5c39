"""A user's jobs as the API handles them: submit (idempotency, the owner's active jobs, a live worker
required), list, cancel, images. The record each of these reads and writes is ``records``'.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from dataclasses import dataclass

import redis
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job
from rq.queue import Queue

from . import objects, stats
from .queue import dequeued, enqueue_generation, keys, live_workers
from .records import fetch_owned, job_record, job_records, new_record, push_event, read_record, save_record
from .requests import JobRequest
from .settings import Settings
from .statuses import TERMINAL, JobStatus


class IdempotencyConflict(Exception):
    """The idempotency key was used before with a different request."""


@dataclass
class Submitted:
    job_id: str
    created: bool


def submit(connection: redis.Redis, settings: Settings, request: JobRequest, owner: str,
           idempotency_key: str | None = None) -> Submitted:
    """Queue a generation job; the same idempotency key with the same request returns the same job.

    One round trip, one transaction (``MULTI``): the RQ job, its fair place in the queue, its record, its
    first event, the owner's indexes and the counter; a job is never in the queue without its record. An
    idempotency key costs one more round trip before it (claiming the key decides whether to submit)."""
    k = keys(settings)
    job_id = uuid.uuid4().hex
    if idempotency_key:
        body = hashlib.sha256(request.model_dump_json().encode()).hexdigest()
        slot = k.idempotency(owner, idempotency_key)
        if not connection.set(slot, json.dumps({"job": job_id, "body": body}), nx=True, ex=settings.result_ttl):
            previous = json.loads(connection.get(slot) or "{}")
            if previous.get("body") != body:
                raise IdempotencyConflict(f"idempotency key {idempotency_key!r} was used for a different request")
            return Submitted(previous["job"], created=False)
    now = time.time()
    record = new_record(job_id, owner, request, now)
    meta = {"owner": owner}  # whose job it is, for fair dispatch and reads; the request is the record's
    with connection.pipeline() as pipe:
        pipe.multi()
        job = enqueue_generation(connection, settings, request, meta, job_id, pipe)
        save_record(pipe, settings, record, queue_key=Queue.redis_queue_namespace_prefix + job.origin)
        push_event(pipe, settings, job_id, {"status": JobStatus.queued})
        pipe.sadd(k.owner_active(owner), job_id)
        pipe.expire(k.owner_active(owner), settings.result_ttl)
        stats.add(pipe, settings, "jobs_submitted")
        pipe.execute()
    return Submitted(job_id, created=True)


def active_jobs(connection: redis.Redis, settings: Settings, owner: str, limit: int) -> int:
    """The owner's queued and running jobs, counted exactly once ``limit`` is in sight (jobs that ended
    without saying so are dropped from the count then); below it, one ``SCARD``."""
    key = keys(settings).owner_active(owner)
    count = connection.scard(key)
    if count < limit:
        return count
    members = [m.decode() for m in connection.smembers(key)]
    found = job_records(connection, settings, members, owner)
    ended = [m for m, r in zip(members, found) if r is None or r["status"] in TERMINAL]
    if ended:
        connection.srem(key, *ended)
    return len(members) - len(ended)


def job_ended(connection: redis.Redis, settings: Settings, owner: str, job_id: str) -> None:
    connection.srem(keys(settings).owner_active(owner), job_id)


class NoWorker(Exception):
    """No live worker serves the model: a job would wait for ever."""


_LIVE_WORKER_SEEN: dict[tuple[str, str, str], float] = {}  # (redis url, prefix, model) -> when a live one was seen
LIVE_WORKER_CACHE_S = 2.0


def require_worker(connection: redis.Redis, settings: Settings, model_id: str) -> None:
    """Raise ``NoWorker`` unless a live worker serves the model. A worker seen alive within the last
    ``LIVE_WORKER_CACHE_S`` counts without asking Redis again (its heartbeat lives longer than that)."""
    seen = (settings.redis_url, settings.redis_prefix, model_id)
    if time.monotonic() - _LIVE_WORKER_SEEN.get(seen, -LIVE_WORKER_CACHE_S) < LIVE_WORKER_CACHE_S:
        return
    if not live_workers(connection, settings, model_id):
        # Workers' heartbeats lapse while Redis refuses their writes: name that trouble, not a missing worker.
        connection.set(keys(settings).readiness_probe(), 1, ex=60)
        raise NoWorker(f"no live worker serves model {model_id!r}; retry later, or pass queue_if_offline: true "
                       "to queue the job until one starts")
    _LIVE_WORKER_SEEN[seen] = time.monotonic()


def list_jobs(connection: redis.Redis, settings: Settings, owner: str, status: JobStatus | None = None,
              cursor: float | None = None, limit: int = 20) -> tuple[list[dict], float | None]:
    """The owner's jobs, newest first, ``limit`` a page; ``cursor`` (the previous page's last submission
    time) continues where that page ended. Returns the records and the next cursor (None at the end)."""
    key, out, upper = keys(settings).owner_jobs(owner, status), [], f"({cursor}" if cursor is not None else "+inf"
    while len(out) < limit:
        page = connection.zrevrangebyscore(key, upper, "-inf", start=0, num=limit + 1, withscores=True)
        if not page:
            return out, None
        found = job_records(connection, settings, [job_id.decode() for job_id, _ in page], owner)
        for (job_id, score), record in zip(page, found):
            if record is not None and (status is None or record["status"] == status):
                out.append(record)
                if len(out) == limit:
                    return out, score
            upper = f"({score}"
    return out, None


def cancel(connection: redis.Redis, settings: Settings, job_id: str, owner: str) -> dict | None:
    """A queued job never runs; a running one stops within one iteration (the engine polls the flag)."""
    record = read_record(connection, settings, job_id)
    if record is None or record.owner != owner:
        return None
    status = record.status
    if status in (JobStatus.queued, JobStatus.running):
        connection.set(keys(settings).job_cancel(job_id), 1, ex=settings.result_ttl)  # first: a job starting now stops
    if status == JobStatus.queued:
        try:
            Job.fetch(job_id, connection=connection).cancel()
        except (InvalidJobOperation, NoSuchJobError):
            status = JobStatus.running  # a worker took it meanwhile: the flag stops it
        else:
            dequeued(connection, settings, record.model, job_id)
            record.change(status=JobStatus.canceled, canceled=True, stage=None)
            with connection.pipeline() as pipe:
                save_record(pipe, settings, record)
                push_event(pipe, settings, job_id, {"status": JobStatus.canceled}, record.has_webhook)
                pipe.srem(keys(settings).owner_active(owner), job_id)
                pipe.execute()
    if status == JobStatus.running:
        push_event(connection, settings, job_id, {"status": JobStatus.running, "cancel_requested": True},
                   record.has_webhook)
    return job_record(connection, settings, job_id, owner)


def image_png(connection: redis.Redis, settings: Settings, job_id: str, n: int, owner: str) -> bytes | None:
    if fetch_owned(connection, job_id, owner) is None:
        return None
    return objects.load_image(connection, settings, job_id, n)


def image_location(connection: redis.Redis, settings: Settings, job_id: str, n: int, owner: str) -> str | None:
    """A presigned URL of the stored PNG, for the owner only, when ``store_presign`` is set; else None."""
    if not settings.store_presign or fetch_owned(connection, job_id, owner) is None:
        return None
    return objects.image_url(connection, settings, job_id, n)
