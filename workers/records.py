"""A job's record (``JobRecord``), what ``GET /v1/jobs/{id}`` shows, and its event stream. Torch-free.

A job is an RQ job that carries only its id; Tally's record of it (owner, request, status, stage, progress,
token, results, cost, timings, error ...) is one Redis key, ``Keys.job_record``, written whole at every change
by whoever makes it (``user_jobs``' submit and cancel, the worker's runner, a failure callback, recovery) and
read in one round trip, queue position included (``job_record``). A submit is one transaction in one round trip: the RQ job, its fair
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

import orjson
import redis
from pydantic import BaseModel, ConfigDict, Field
from rq.exceptions import NoSuchJobError
from rq.job import Job

from . import webhooks
from .queue import keys
from .requests import JobRequest
from .settings import Settings
from .statuses import TERMINAL, JobStatus


# ------------------------------------------------------------------------------------------------- record
def fetch_owned(connection: redis.Redis, job_id: str, owner: str) -> Job | None:
    try:
        job = Job.fetch(job_id, connection=connection)
    except NoSuchJobError:
        return None
    return job if job.meta.get("owner") == owner else None  # another owner's job does not exist for you


FAILED_IN_WORKER = {"code": "internal", "message": "the job failed in the worker; it was retried and gave up"}


class JobRecord(BaseModel):
    """A job as Tally keeps it: what ``GET /v1/jobs/{id}`` shows comes from these fields (``job_record``), so a
    field added here is stored, read back and served."""

    model_config = ConfigDict(validate_assignment=True)

    id: str
    owner: str
    model: str
    request: JobRequest  # as the API validated and resolved it; stored here only (RQ's job carries its id)
    status: JobStatus = JobStatus.queued
    stage: str | None = None  # while running: the engine's stage
    progress: dict = Field(default_factory=lambda: {"images_verified": 0, "candidates": 0, "iterations": 0,
                                                    "loss": None, "detected_counts": []})
    token: dict | None = None  # the library key looked up, hit or miss, learning scheduled
    results: list[dict] = Field(default_factory=list)
    cost: dict | None = None
    timings: dict[str, float] = Field(default_factory=dict)  # submitted, started, finished
    error: dict | None = None
    budget_exhausted: bool | None = None
    prompt: str | None = None  # as the engine wrote it (the count in it)
    object: str | None = None  # as the engine resolved it
    warnings: list[str] = Field(default_factory=list)
    deadline: float | None = None  # its first start plus its budget's seconds
    canceled: bool | None = None

    def change(self, **fields) -> None:
        """Set ``fields`` (validated, as the record is stored)."""
        for name, value in fields.items():
            setattr(self, name, value)

    @property
    def has_webhook(self) -> bool:
        return self.request.webhook is not None


# A public record's fields: the stored ones, a record written by an older version read with the defaults.
_PUBLIC_DEFAULTS = {name: field.get_default(call_default_factory=True) for name, field in JobRecord.model_fields.items()}


def new_record(job_id: str, owner: str, request: JobRequest, submitted: float) -> JobRecord:
    """A queued job's record."""
    return JobRecord(id=job_id, owner=owner, model=request.model, request=request, timings={"submitted": submitted})


def save_record(connection: redis.Redis | redis.client.Pipeline, settings: Settings, record: JobRecord,
                queue_key: str | None = None) -> None:
    """Write a job's whole record (on a pipeline: queued there), with the result TTL. ``queue_key``: the
    RQ list the job waits in, given once, at submit (``job_record`` finds the queue position there; a new
    record is in no status index yet)."""
    if not isinstance(connection, redis.client.Pipeline):
        with connection.pipeline(transaction=False) as pipe:
            save_record(pipe, settings, record, queue_key)
            pipe.execute()
        return
    k, job_id, status = keys(settings), record.id, str(record.status)
    fields = {"record": record.model_dump_json(), "status": status}
    if queue_key is not None:
        fields["queue"] = queue_key
    connection.hset(k.job_record(job_id), mapping=fields)
    connection.expire(k.job_record(job_id), settings.result_ttl)
    # The owner's jobs, all and by status (``list_jobs``: a page costs a page, whatever the filter), written
    # with every record, so that a record rewritten after a Redis flush is listed again too.
    submitted, owner = record.timings.get("submitted") or time.time(), record.owner
    for other in JobStatus if queue_key is None else ():
        if other != status:
            connection.zrem(k.owner_jobs(owner, other), job_id)
    for index in (k.owner_jobs(owner), k.owner_jobs(owner, status)):
        connection.zadd(index, {job_id: submitted})
        connection.zremrangebyscore(index, 0, time.time() - settings.result_ttl)  # their records have expired
        connection.expire(index, settings.result_ttl)


def read_record(connection: redis.Redis, settings: Settings, job_id: str) -> JobRecord | None:
    """A job's stored record (anyone's: for the worker and the lifecycle, not for callers)."""
    raw = connection.hget(keys(settings).job_record(job_id), "record")
    return JobRecord.model_validate_json(raw) if raw is not None else None


def worker_record(connection: redis.Redis, settings: Settings, job_id: str) -> JobRecord:
    """The record a worker runs a job from (its request is there, and only there)."""
    record = read_record(connection, settings, job_id)
    if record is None:  # it expires with the job: only a Redis that evicts keys loses one alone
        raise LookupError(f"job {job_id} has no record (expired or evicted): nothing to run")
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
    stored = orjson.loads(reply[0])  # the hot read: the JSON as stored, not validated again
    if stored.get("owner") != owner:
        return None  # another owner's job does not exist for you
    record = {name: stored.get(name, default) for name, default in _PUBLIC_DEFAULTS.items()}
    status = JobStatus(record["status"])
    record.update(status=status, stage=record["stage"] if status == JobStatus.running else None,
                  error=record["error"] or (FAILED_IN_WORKER if status == JobStatus.failed else None),
                  submitted=record["timings"].get("submitted"), queue_position=reply[1] if len(reply) > 1 else None)
    return record


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
    if record is None or record.status in TERMINAL or record.status == status:
        return None
    record.change(status=status, stage=None, error=None if retried else FAILED_IN_WORKER)
    with connection.pipeline() as pipe:
        save_record(pipe, settings, record)
        push_event(pipe, settings, job_id, {"status": status, "requeued": retried}, record.has_webhook)
        if not retried:
            pipe.srem(keys(settings).owner_active(record.owner), job_id)
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


def decode_events(entries) -> list[tuple[str, dict]]:
    """(stream id, event) pairs of XRANGE / XREAD entries."""
    return [(i.decode(), json.loads(fields[b"event"])) for i, fields in entries]
