"""The API side of the job lifecycle: submit (with idempotency), the record ``GET /v1/jobs/{id}`` shows,
the event stream's events, cancel, images. Torch-free; the worker side lives in ``tasks``.

A job is an RQ job; Tally's record lives in its ``meta`` (owner, request, stage, progress, token, results,
cost, timings, error). Every change is also appended to the job's Redis stream, whose statuses are
``JobStatus`` values, so a client following the event stream sees every change in order and is woken
the moment the job ends (``XREAD BLOCK``, no polling). An owner's jobs are indexed by submission time.
Images are PNGs in Redis with the result TTL, or in the object store behind a Redis key with that TTL
(``objects``); every key a job leaves expires with it.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from dataclasses import dataclass
from enum import StrEnum

import redis
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job
from rq.job import JobStatus as RQStatus

from optimization.config import ModelSpec

from . import objects
from .queue import enqueue_generation, generation_queue, keys, live_workers
from .requests import JobRequest
from .settings import Settings


class JobStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    canceled = "canceled"


TERMINAL = {JobStatus.succeeded, JobStatus.failed, JobStatus.canceled}


class IdempotencyConflict(Exception):
    """The idempotency key was used before with a different request."""


@dataclass
class Submitted:
    job_id: str
    created: bool


# ---------------------------------------------------------------------------------------------- models
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


# ------------------------------------------------------------------------------------------------- submit
def submit(connection: redis.Redis, settings: Settings, request: JobRequest, owner: str,
           idempotency_key: str | None = None) -> Submitted:
    """Queue a generation job; the same idempotency key with the same request returns the same job."""
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
    meta = {"owner": owner, "request": request.model_dump(mode="json"), "model": request.model, "stage": None,
            "progress": {"images_verified": 0, "candidates": 0, "iterations": 0, "loss": None, "detected_counts": []},
            "token": None, "results": [], "cost": None, "timings": {"submitted": time.time()}, "error": None}
    enqueue_generation(connection, settings, request, meta, job_id)
    push_event(connection, settings, job_id, {"status": JobStatus.queued})
    now = time.time()
    with connection.pipeline() as pipe:
        pipe.sadd(k.owner_active(owner), job_id)
        pipe.expire(k.owner_active(owner), settings.result_ttl)
        pipe.zadd(k.owner_jobs(owner), {job_id: now})
        pipe.zremrangebyscore(k.owner_jobs(owner), 0, now - settings.result_ttl)  # their records have expired
        pipe.expire(k.owner_jobs(owner), settings.result_ttl)
        pipe.hincrby(k.metrics(), "jobs_submitted", 1)
        pipe.execute()
    return Submitted(job_id, created=True)


def active_jobs(connection: redis.Redis, settings: Settings, owner: str, limit: int) -> int:
    """The owner's queued and running jobs, counted exactly once ``limit`` is in sight (jobs that ended
    without saying so, e.g. timed out by RQ, are dropped from the count then)."""
    key = keys(settings).owner_active(owner)
    members = [m.decode() for m in connection.smembers(key)]
    if len(members) < limit:
        return len(members)
    ended = [m for m in members if (r := job_record(connection, settings, m, owner)) is None or r["status"] in TERMINAL]
    if ended:
        connection.srem(key, *ended)
    return len(members) - len(ended)


def job_ended(connection: redis.Redis, settings: Settings, owner: str, job_id: str) -> None:
    connection.srem(keys(settings).owner_active(owner), job_id)


class NoWorker(Exception):
    """No live worker serves the model: a job would wait for ever."""


def require_worker(connection: redis.Redis, settings: Settings, model_id: str) -> None:
    if not live_workers(connection, settings, model_id):
        raise NoWorker(f"no live worker serves model {model_id!r}; retry later, or pass queue_if_offline: true "
                       "to queue the job until one starts")


def list_jobs(connection: redis.Redis, settings: Settings, owner: str, status: JobStatus | None = None,
              cursor: float | None = None, limit: int = 20) -> tuple[list[dict], float | None]:
    """The owner's jobs, newest first, ``limit`` a page; ``cursor`` (the previous page's last submission
    time) continues where that page ended. Returns the records and the next cursor (None at the end)."""
    key, out, upper = keys(settings).owner_jobs(owner), [], f"({cursor}" if cursor is not None else "+inf"
    while len(out) < limit:
        page = connection.zrevrangebyscore(key, upper, "-inf", start=0, num=limit * 2, withscores=True)
        if not page:
            return out, None
        for job_id, score in page:
            record = job_record(connection, settings, job_id.decode(), owner)
            if record is not None and (status is None or record["status"] == status):
                out.append(record)
                if len(out) == limit:
                    return out, score
            upper = f"({score}"
    return out, None


# ------------------------------------------------------------------------------------------------- record
def _fetch(connection: redis.Redis, job_id: str, owner: str) -> Job | None:
    try:
        job = Job.fetch(job_id, connection=connection)
    except NoSuchJobError:
        return None
    return job if job.meta.get("owner") == owner else None  # another owner's job does not exist for you


def status_of(job: Job) -> JobStatus:
    meta = job.meta
    if (meta.get("timings") or {}).get("finished"):  # the worker's own word, a moment before RQ's
        return JobStatus.canceled if meta.get("canceled") else JobStatus.failed if meta.get("error") else JobStatus.succeeded
    rq_status = job.get_status(refresh=False)
    if meta.get("canceled") or rq_status in (RQStatus.CANCELED, RQStatus.STOPPED):
        return JobStatus.canceled
    if rq_status == RQStatus.FINISHED:
        return JobStatus.failed if meta.get("error") else JobStatus.succeeded
    if rq_status == RQStatus.FAILED:
        return JobStatus.failed
    if rq_status == RQStatus.STARTED:
        return JobStatus.running
    return JobStatus.queued


def job_record(connection: redis.Redis, settings: Settings, job_id: str, owner: str) -> dict | None:
    """What ``GET /v1/jobs/{id}`` shows; None when the job does not exist for this owner."""
    job = _fetch(connection, job_id, owner)
    if job is None:
        return None
    meta = job.meta
    status = status_of(job)
    error = meta.get("error")
    if status == JobStatus.failed and error is None:
        # The job raised or its worker died and no retry was left; the traceback stays in the worker log.
        error = {"code": "internal", "message": "the job failed in the worker; it was retried and gave up"}
    position = job.get_position() if status == JobStatus.queued else None
    return {"id": job.id, "status": status, "stage": meta.get("stage") if status == JobStatus.running else None,
            "submitted": (meta.get("timings") or {}).get("submitted"),
            "queue_position": position, "model": meta.get("model"), "request": meta.get("request"),
            "progress": meta.get("progress"), "token": meta.get("token"), "results": meta.get("results") or [],
            "cost": meta.get("cost"), "timings": meta.get("timings"), "error": error, "owner": meta.get("owner"),
            "budget_exhausted": meta.get("budget_exhausted"),
            "prompt": meta.get("prompt"), "object": meta.get("object"), "warnings": meta.get("warnings") or []}


def push_event(connection: redis.Redis, settings: Settings, job_id: str, event: dict) -> None:
    key = keys(settings).job_events(job_id)
    with connection.pipeline() as pipe:
        pipe.xadd(key, {"event": json.dumps({**event, "time": round(time.time(), 3)})}, maxlen=10_000,
                  approximate=True)
        pipe.expire(key, settings.result_ttl)
        pipe.execute()


def decode_events(entries) -> list[tuple[str, dict]]:
    """(stream id, event) pairs of XRANGE / XREAD entries."""
    return [(i.decode(), json.loads(fields[b"event"])) for i, fields in entries]


# ------------------------------------------------------------------------------------------------- cancel
def cancel(connection: redis.Redis, settings: Settings, job_id: str, owner: str) -> dict | None:
    """A queued job never runs; a running one stops within one iteration (the engine polls the flag)."""
    job = _fetch(connection, job_id, owner)
    if job is None:
        return None
    status = status_of(job)
    if status == JobStatus.queued:
        try:
            job.cancel()
        except InvalidJobOperation:
            pass  # it started meanwhile: the flag below stops it
        job.meta["canceled"] = True
        job.save_meta()
    if status == JobStatus.queued:
        push_event(connection, settings, job_id, {"status": JobStatus.canceled})
        job_ended(connection, settings, owner, job_id)
    if status in (JobStatus.queued, JobStatus.running):
        connection.set(keys(settings).job_cancel(job_id), 1, ex=settings.result_ttl)
    if status == JobStatus.running:
        push_event(connection, settings, job_id, {"status": JobStatus.running, "cancel_requested": True})
    return job_record(connection, settings, job_id, owner)


def image_png(connection: redis.Redis, settings: Settings, job_id: str, n: int, owner: str) -> bytes | None:
    if _fetch(connection, job_id, owner) is None:
        return None
    return objects.load_image(connection, settings, job_id, n)


def image_location(connection: redis.Redis, settings: Settings, job_id: str, n: int, owner: str) -> str | None:
    """A presigned URL of the stored PNG, for the owner only, when ``store_presign`` is set; else None."""
    if not settings.store_presign or _fetch(connection, job_id, owner) is None:
        return None
    return objects.image_url(connection, settings, job_id, n)


def draw_detections(png: bytes, boxes: list) -> bytes:
    """The PNG enlarged with its detections drawn (``?boxes=true``)."""
    import io

    from PIL import Image

    from optimization.visualize import draw_boxes

    buffer = io.BytesIO()
    draw_boxes(Image.open(io.BytesIO(png)).convert("RGB"), boxes).save(buffer, format="PNG")
    return buffer.getvalue()


def queue_depth(connection: redis.Redis, settings: Settings, model_id: str) -> int:
    return len(generation_queue(connection, settings, model_id))
