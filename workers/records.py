"""The API side of the job lifecycle: submit (with idempotency), the record ``GET /v1/jobs/{id}`` shows,
the event stream's events, cancel, images. Torch-free; the worker side lives in ``tasks``.

A job is an RQ job; Tally's record of it (owner, request, status, stage, progress, token, results, cost,
timings, error ...) is one Redis key, ``Keys.job_record``, written whole at every change by whoever makes
it (the submit, the worker, a cancel, a failure callback, recovery) and read in one round trip, queue
position included (``job_record``). A submit is one transaction in one round trip: the RQ job, its fair
place in the queue, the record, the first event, the owner's indexes. Every change is also appended to
the job's Redis stream, whose statuses are ``JobStatus`` values, so a client following the event stream
sees every change in order and is woken the moment the job ends (``XREAD BLOCK``, no polling). An
owner's jobs are indexed by submission time.
Images are PNGs in Redis with the result TTL, or in the object store behind a Redis key with that TTL
(``objects``); every key a job leaves expires with it.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from dataclasses import dataclass

import orjson
import redis
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job
from rq.queue import Queue

from optimization.config import ModelSpec

from . import objects, stats, webhooks
from .queue import dequeued, enqueue_generation, generation_queue, keys, live_workers
from .requests import JobRequest
from .settings import Settings
from .statuses import TERMINAL, JobStatus


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
    meta = {"owner": owner, "model": request.model, "request": record["request"]}  # what RQ keeps of it
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


# ------------------------------------------------------------------------------------------------- record
def _fetch(connection: redis.Redis, job_id: str, owner: str) -> Job | None:
    try:
        job = Job.fetch(job_id, connection=connection)
    except NoSuchJobError:
        return None
    return job if job.meta.get("owner") == owner else None  # another owner's job does not exist for you


FAILED_IN_WORKER = {"code": "internal", "message": "the job failed in the worker; it was retried and gave up"}


def new_record(job_id: str, owner: str, request: JobRequest, submitted: float) -> dict:
    """A queued job's record. Its fields are what ``GET /v1/jobs/{id}`` shows (``job_record``)."""
    return {"id": job_id, "status": JobStatus.queued, "owner": owner, "model": request.model,
            "request": request.model_dump(mode="json"), "stage": None,
            "progress": {"images_verified": 0, "candidates": 0, "iterations": 0, "loss": None, "detected_counts": []},
            "token": None, "results": [], "cost": None, "timings": {"submitted": submitted}, "error": None,
            "budget_exhausted": None, "prompt": None, "object": None, "warnings": [], "deadline": None}


def save_record(connection: redis.Redis | redis.client.Pipeline, settings: Settings, record: dict,
                queue_key: str | None = None) -> None:
    """Write a job's whole record (on a pipeline: queued there), with the result TTL. ``queue_key``: the
    RQ list the job waits in, given once, at submit (``job_record`` finds the queue position there; a new
    record is in no status index yet)."""
    if not isinstance(connection, redis.client.Pipeline):
        with connection.pipeline(transaction=False) as pipe:
            save_record(pipe, settings, record, queue_key)
            pipe.execute()
        return
    k, job_id, status = keys(settings), record["id"], str(record["status"])
    fields = {"record": orjson.dumps(record), "status": status}
    if queue_key is not None:
        fields["queue"] = queue_key
    connection.hset(k.job_record(job_id), mapping=fields)
    connection.expire(k.job_record(job_id), settings.result_ttl)
    # The owner's jobs, all and by status (``list_jobs``: a page costs a page, whatever the filter), written
    # with every record, so that a record rewritten after a Redis flush is listed again too.
    submitted, owner = (record.get("timings") or {}).get("submitted") or time.time(), record["owner"]
    for other in JobStatus if queue_key is None else ():
        if other != status:
            connection.zrem(k.owner_jobs(owner, other), job_id)
    for index in (k.owner_jobs(owner), k.owner_jobs(owner, status)):
        connection.zadd(index, {job_id: submitted})
        connection.zremrangebyscore(index, 0, time.time() - settings.result_ttl)  # their records have expired
        connection.expire(index, settings.result_ttl)


def read_record(connection: redis.Redis, settings: Settings, job_id: str) -> dict | None:
    """A job's stored record as written (anyone's: for the worker and the lifecycle, not for callers)."""
    raw = connection.hget(keys(settings).job_record(job_id), "record")
    return orjson.loads(raw) if raw is not None else None


def worker_record(connection: redis.Redis, settings: Settings, job: Job) -> dict:
    """The record a worker starts from: the stored one, else (a job queued before records were kept, or
    whose record was lost) one rebuilt from what RQ keeps of the job."""
    record = read_record(connection, settings, job.id)
    if record is None:
        meta = job.meta
        record = new_record(job.id, meta["owner"], JobRequest.model_validate(meta["request"]),
                            (meta.get("timings") or {}).get("submitted", time.time()))
    return record


# One round trip: the record, and the job's position in its queue when it is queued (LPOS on the RQ list).
_READ = """
local r = redis.call('HMGET', KEYS[1], 'record', 'status', 'queue')
if not r[1] then return false end
if r[2] == 'queued' and r[3] then return {r[1], redis.call('LPOS', r[3], ARGV[1])} end
return {r[1]}
"""
_READ_SHA = hashlib.sha1(_READ.encode()).hexdigest()


def _read_script(client, settings: Settings, job_id: str):
    """The read script on ``client``; on a pipeline, by its text (a pipeline would ask for a loaded script
    with an extra round trip); else by its SHA, loaded on the first NOSCRIPT."""
    args = (1, keys(settings).job_record(job_id), job_id)
    if isinstance(client, redis.client.Pipeline):
        return client.eval(_READ, *args)
    try:
        return client.evalsha(_READ_SHA, *args)
    except redis.exceptions.NoScriptError:
        return client.eval(_READ, *args)


def _public(reply, owner: str) -> dict | None:
    """The read script's reply as ``job_record`` returns it; None for another owner's job."""
    if not reply:
        return None
    record = orjson.loads(reply[0])
    if record.get("owner") != owner:
        return None  # another owner's job does not exist for you
    status = JobStatus(record["status"])
    error = record.get("error")
    if status == JobStatus.failed and error is None:
        error = FAILED_IN_WORKER
    timings = record.get("timings") or {}
    return {"id": record["id"], "status": status, "stage": record.get("stage") if status == JobStatus.running else None,
            "submitted": timings.get("submitted"), "queue_position": reply[1] if len(reply) > 1 else None,
            "model": record.get("model"), "request": record.get("request"), "progress": record.get("progress"),
            "token": record.get("token"), "results": record.get("results") or [], "cost": record.get("cost"),
            "timings": timings, "error": error, "owner": record.get("owner"),
            "budget_exhausted": record.get("budget_exhausted"), "prompt": record.get("prompt"),
            "object": record.get("object"), "warnings": record.get("warnings") or [], "deadline": record.get("deadline")}


def job_record(connection: redis.Redis, settings: Settings, job_id: str, owner: str) -> dict | None:
    """What ``GET /v1/jobs/{id}`` shows, in one round trip; None when the job does not exist for this owner."""
    return _public(_read_script(connection, settings, job_id), owner)


def job_records(connection: redis.Redis, settings: Settings, job_ids: list[str], owner: str) -> list[dict | None]:
    """``job_record`` of each id, all in one round trip."""
    if not job_ids:
        return []
    with connection.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            _read_script(pipe, settings, job_id)
        return [_public(reply, owner) for reply in pipe.execute()]


def job_interrupted(connection: redis.Redis, settings: Settings, job_id: str, retried: bool) -> JobStatus | None:
    """A job's run ended without the worker's word (its worker died, or it raised past the job's own
    handlers): it is queued again when RQ retries it, else failed. Writes the record and the event,
    unless the record already says so or the job had ended; returns the status written, if any."""
    record = read_record(connection, settings, job_id)
    status = JobStatus.queued if retried else JobStatus.failed
    if record is None or record["status"] in TERMINAL or record["status"] == status:
        return None
    record.update(status=status, stage=None, error=None if retried else FAILED_IN_WORKER)
    with connection.pipeline() as pipe:
        save_record(pipe, settings, record)
        push_event(pipe, settings, job_id, {"status": status, "requeued": retried}, has_webhook(record))
        if not retried:
            pipe.srem(keys(settings).owner_active(record["owner"]), job_id)
        pipe.execute()
    return status


def push_event(connection: redis.Redis | redis.client.Pipeline, settings: Settings, job_id: str, event: dict,
               webhook: bool = False) -> None:
    """Append ``event`` to the job's stream (on a pipeline: queued there, for its caller to execute); with
    ``webhook`` (the job has one) also hand it to the webhook dispatchers."""
    key = keys(settings).job_events(job_id)
    pipe = connection if isinstance(connection, redis.client.Pipeline) else connection.pipeline()
    event = {**event, "time": round(time.time(), 3)}
    pipe.xadd(key, {"event": json.dumps(event)}, maxlen=10_000, approximate=True)
    pipe.expire(key, settings.result_ttl)
    if webhook:
        webhooks.add_event(pipe, settings, job_id, event)
    if pipe is not connection:
        pipe.execute()


def has_webhook(record: dict) -> bool:
    return bool(record["request"].get("webhook"))


def decode_events(entries) -> list[tuple[str, dict]]:
    """(stream id, event) pairs of XRANGE / XREAD entries."""
    return [(i.decode(), json.loads(fields[b"event"])) for i, fields in entries]


# ------------------------------------------------------------------------------------------------- cancel
def cancel(connection: redis.Redis, settings: Settings, job_id: str, owner: str) -> dict | None:
    """A queued job never runs; a running one stops within one iteration (the engine polls the flag)."""
    record = read_record(connection, settings, job_id)
    if record is None or record.get("owner") != owner:
        return None
    status = record["status"]
    if status in (JobStatus.queued, JobStatus.running):
        connection.set(keys(settings).job_cancel(job_id), 1, ex=settings.result_ttl)  # first: a job starting now stops
    if status == JobStatus.queued:
        try:
            Job.fetch(job_id, connection=connection).cancel()
        except (InvalidJobOperation, NoSuchJobError):
            status = JobStatus.running  # a worker took it meanwhile: the flag stops it
        else:
            dequeued(connection, settings, record["model"], job_id)
            record.update(status=JobStatus.canceled, canceled=True, stage=None)
            with connection.pipeline() as pipe:
                save_record(pipe, settings, record)
                push_event(pipe, settings, job_id, {"status": JobStatus.canceled}, has_webhook(record))
                pipe.srem(keys(settings).owner_active(owner), job_id)
                pipe.execute()
    if status == JobStatus.running:
        push_event(connection, settings, job_id, {"status": JobStatus.running, "cancel_requested": True},
                   has_webhook(record))
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


def queue_depth(connection: redis.Redis, settings: Settings, model_id: str) -> int:
    return len(generation_queue(connection, settings, model_id))
