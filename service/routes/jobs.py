"""/v1/jobs: submit, watch (record and event stream), fetch images, cancel.

Submitting and reading a record are the hot routes: ``async``, with their few Redis round trips inline
(the key's admission, the quota's count, the submit's one transaction; the record's one read), which costs
less than a hop to the thread pool and back; the rest run in the thread pool."""

from __future__ import annotations

import asyncio
import json
import re
import time
from functools import partial
from typing import Annotated

import anyio
import redis
from fastapi import APIRouter, Header, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse, Response, StreamingResponse

from optimization.config import Budget
from workers import records, stats, user_jobs
from workers.queue import keys, model_classes
from workers.requests import build_request
from workers.streams import StreamSlots, key_is_live

from .. import images
from ..deps import AUTH_ERRORS, CallerDep, OwnerDep, RedisDep, SettingsDep, reject
from ..errors import ApiError
from ..links import image_url, job_links
from ..schemas import Error, JobAccepted, JobCreate, JobList, JobOut

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=AUTH_ERRORS)
NOT_FOUND = {404: {"model": Error, "description": "No such job for this caller."}}
STREAM_ID = re.compile(r"(\d{1,20})-(\d{1,20})")
JOB_ID = re.compile(r"[0-9a-f]{32}")
IMAGE_INDEX = re.compile(r"0|[1-9][0-9]{0,3}")  # uuid4().hex, as user_jobs.submit makes them


def _job_id(job_id: str) -> str:
    """A job id in its format, else 404: any other string names no job (and never reaches RQ, which raises
    on some, e.g. ``a..b``)."""
    if not JOB_ID.fullmatch(job_id):
        raise ApiError(404, "not_found", f"no job {job_id[:80]!r}")
    return job_id


def _record_out(record: dict, request: Request) -> JobOut:
    """The public record (``records.job_record``) in the API's schema, field by name: the record's own fields
    over its request's (the prompt and object as the engine wrote them, else as asked), image URLs added."""
    asked = record["request"]
    fields = {**asked, **{name: value for name, value in record.items() if value is not None}}
    fields.update(prompt_as_typed=asked["prompt"],
                  results=[{**r, "url": image_url(request, record["id"], r["index"])} for r in record["results"]],
                  webhook_events_filter=asked.get("webhook_events_filter") if asked.get("webhook") else None)
    return JobOut.model_validate({name: value for name, value in fields.items() if name in JobOut.model_fields})


@router.post("", status_code=202, response_model=JobAccepted,
             responses={409: {"model": Error}, 422: {"model": Error}, 503: {"model": Error}})
async def create_job(body: JobCreate, request: Request, response: Response, settings: SettingsDep,
                     connection: RedisDep, caller: CallerDep,
                     idempotency_key: Annotated[str | None, Header(max_length=200)] = None) -> JobAccepted:
    """Queue a generation job.

    Scope: any key; the job belongs to the key."""
    build = partial(build_request, settings, prompt=body.prompt, count=body.count, object_=body.object,
                    num_images=body.num_images, seed=body.seed, model=body.model, policy=body.policy,
                    budget=body.budget.model_dump() if body.budget else None,
                    classes_of=lambda spec: model_classes(connection, settings, spec),
                    idempotency_key=idempotency_key,
                    max_budget=Budget(**caller.key.max_budget) if caller.key and caller.key.max_budget else None,
                    webhook=body.webhook, webhook_events_filter=body.webhook_events_filter)
    req = await run_in_threadpool(build) if body.webhook else build()  # a webhook's host is resolved: off the loop
    limit = caller.key.max_active_jobs if caller.key and caller.key.max_active_jobs else settings.max_active_jobs
    if user_jobs.active_jobs(connection, settings, caller.owner, limit) >= limit:
        raise reject(connection, settings, 429, "quota_active_jobs", f"this key has {limit} jobs queued or "
                     "running, its limit; retry when one ends", headers={"Retry-After": "10"})
    if not body.queue_if_offline:
        try:
            user_jobs.require_worker(connection, settings, req.model)
        except user_jobs.NoWorker as exc:
            raise ApiError(503, "no_worker", str(exc), headers={"Retry-After": "30"}) from None
    try:
        submitted = user_jobs.submit(connection, settings, req, caller.owner, idempotency_key)
    except user_jobs.IdempotencyConflict as exc:
        raise ApiError(409, "idempotency_conflict", str(exc)) from None
    links = job_links(request, submitted.job_id)
    response.headers["Location"] = links["self"]
    return JobAccepted(id=submitted.job_id, status=records.JobStatus.queued, links=links)


@router.get("", response_model=JobList, responses={422: {"model": Error}})
def list_jobs(request: Request, settings: SettingsDep, connection: RedisDep, owner: OwnerDep,
              status: Annotated[records.JobStatus | None, Query(description="Only jobs in this status.")] = None,
              cursor: Annotated[str | None, Query(pattern=r"^\d{1,12}(\.\d{1,9})?$",
                                                  description="next_cursor of the previous page.")] = None,
              limit: Annotated[int, Query(ge=1, le=100)] = 20) -> JobList:
    """The caller's jobs, newest first (kept for the result TTL).

    Scope: any key; lists that key's jobs only.
    """
    found, next_cursor = user_jobs.list_jobs(connection, settings, owner, status, float(cursor) if cursor else None, limit)
    return JobList(jobs=[_record_out(r, request) for r in found],
                   next_cursor=repr(next_cursor) if next_cursor is not None else None)


def _record(connection, settings, job_id: str, owner: str) -> dict:
    record = records.job_record(connection, settings, _job_id(job_id), owner)
    if record is None:
        raise ApiError(404, "not_found", f"no job {job_id!r}")
    return record


@router.get("/{job_id}", response_model=JobOut, responses=NOT_FOUND)
async def get_job(job_id: str, request: Request, settings: SettingsDep, connection: RedisDep,
                  owner: OwnerDep) -> JobOut:
    """The job's record; while it is queued, with its estimated start.

    Scope: the key that created the job (another key's job is 404)."""
    record = _record(connection, settings, job_id, owner)
    out = _record_out(record, request)
    if record["status"] == records.JobStatus.queued and record["queue_position"] is not None:
        wait = stats.estimated_wait(record["queue_position"] + 1, *stats.pace(connection, settings, record["model"]))
        if wait is not None:
            out.estimated_start = round(time.time() + wait, 1)
    return out


@router.delete("/{job_id}", response_model=JobOut, responses=NOT_FOUND)
def cancel_job(job_id: str, request: Request, settings: SettingsDep, connection: RedisDep, owner: OwnerDep) -> JobOut:
    """Cancel: a queued job never runs, a running one stops within one iteration (``cancel_requested`` is then
    true, and the job's status becomes ``canceled`` when it stops).

    Scope: the key that created the job (another key's job is 404)."""
    record = user_jobs.cancel(connection, settings, _job_id(job_id), owner)
    if record is None:
        raise ApiError(404, "not_found", f"no job {job_id!r}")
    return _record_out(record, request).model_copy(update={"cancel_requested": record["status"] in (
        records.JobStatus.queued, records.JobStatus.running, records.JobStatus.canceled)})


def _stream_id(value: str | None) -> str:
    """Where a stream resumes: an event id as Redis writes them (two unsigned 64-bit integers), else 422."""
    match = STREAM_ID.fullmatch(value or "0-0")
    if match is None or max(int(match[1]), int(match[2])) >= 2**64:
        raise ApiError(422, "invalid_request", "Last-Event-ID: must be an event id this stream sent (like 1700000000000-0)")
    return value or "0-0"


def _sse(event: str, body: dict, event_id: str | None = None) -> str:
    return (f"id: {event_id}\n" if event_id else "") + f"event: {event}\ndata: {json.dumps(body)}\n\n"


@router.get("/{job_id}/events", responses={200: {"content": {"text/event-stream": {}}}, **NOT_FOUND,
                                           422: {"model": Error}, 429: {"model": Error}})
async def job_events(job_id: str, request: Request, settings: SettingsDep, connection: RedisDep, caller: CallerDep,
                     last_event_id: Annotated[str | None, Header(description="Resume after this event id.")] = None):
    """Server-Sent Events: one ``progress`` event per change, in order, then one ``final`` event (the record).

    Pushed, not polled: the stream blocks on the job's Redis stream, costs no thread, sends a comment line
    every ``sse_heartbeat_s``, and is released the moment the client goes away. A key holds at most
    ``max_streams_per_key`` streams at once (429 past it); a stream whose key is revoked ends with an
    ``error`` event at its next event or heartbeat.

    Scope: the key that created the job (another key's job is 404).
    """
    await run_in_threadpool(_record, connection, settings, job_id, caller.owner)
    last = _stream_id(last_event_id)
    slots = StreamSlots(request.app.state.async_redis, settings, caller.owner)
    if not await slots.take():
        raise reject(connection, settings, 429, "too_many_streams", f"this key already holds "
                     f"{settings.max_streams_per_key} open event streams (max_streams_per_key); close one first",
                     {"Retry-After": str(int(settings.sse_heartbeat_s))})
    return StreamingResponse(_event_stream(job_id, last, slots, request, settings, connection, caller),
                             media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _event_stream(job_id: str, last: str, slots: StreamSlots, request: Request, settings, connection, caller):
    """``job_events``' stream from event ``last`` on; its slot is released however it ends."""
    owner, events, key = caller.owner, request.app.state.async_redis, keys(settings).job_events(job_id)

    async def final() -> str:
        record = await run_in_threadpool(records.job_record, connection, settings, job_id, owner)
        return _sse("final", _record_out(record, request).model_dump(mode="json") if record
                    else {"id": job_id, "status": "expired"})

    try:
        while True:
            try:
                found = await events.xread({key: last}, count=100, block=int(settings.sse_heartbeat_s * 1000))
                if caller.key is not None and not await key_is_live(events, settings, caller.key.hash):
                    yield _sse("error", {"error": "unauthorized", "message": "the API key was revoked"})
                    return
                await slots.renew()
            except redis.ConnectionError:
                yield ": the job store is unreachable; retrying\n\n"
                await asyncio.sleep(1)
                continue
            if not found:  # a heartbeat; and a job whose record expired or ended unseen still ends its stream
                yield ": heartbeat\n\n"
                record = await run_in_threadpool(records.job_record, connection, settings, job_id, owner)
                if record is None or record["status"] in records.TERMINAL:
                    yield await final()
                    return
                continue
            for event_id, event in records.decode_events(found[0][1]):
                last = event_id
                yield _sse("progress", event, event_id)
                if event.get("status") in records.TERMINAL:
                    yield await final()
                    return
    finally:
        with anyio.CancelScope(shield=True):  # the client went: its stream is cancelled, the slot still freed
            await slots.release()


@router.get("/{job_id}/images/{n}", name="job_image", response_class=Response,
            responses={200: {"content": {t: {} for t in images.MEDIA_TYPES.values()}}, **NOT_FOUND,
                       307: {"description": "The plain PNG is at a presigned URL of the object store (Location); "
                                            "deployments with store_presign only."}})
def job_image(job_id: str, n: Annotated[int, Path(description="The image's index: 0, 1, ... (digits only).")],
              request: Request, settings: SettingsDep, connection: RedisDep, owner: OwnerDep,
              boxes: Annotated[bool, Query(description="Draw the detections (at 4x the image's size unless "
                                                       "``scale`` says otherwise).")] = False,
              scale: Annotated[int | None, Query(ge=1, le=16, description=(
                  "Enlarge the image this many times (nearest neighbour: shapes stay crisp); drawn boxes scale "
                  "with it. Default: 1, or 4 with boxes."))] = None,
              image_format: Annotated[images.ImageFormat, Query(
                  alias="format", description="The encoding: the stored PNG, or it re-encoded as JPEG or WEBP "
                                              "(the same pixels, boxes included).")] = "png",
              if_none_match: Annotated[str | None, Header(include_in_schema=False)] = None) -> Response:
    """One of the job's images. An image never changes once written, so it carries an ``ETag`` (a request
    with ``If-None-Match`` gets 304) and may be cached by the caller (``private``: it needs the key).

    Scope: the key that created the job (another key's job is 404)."""
    _job_id(job_id)
    if not IMAGE_INDEX.fullmatch(request.path_params["n"]):  # the number's lax parsing takes "1.0", "+1", "1_0"
        raise ApiError(404, "not_found", f"no image {request.path_params['n'][:20]!r}: images are numbered 0, 1, ...")
    if not boxes and scale in (None, 1) and image_format == "png" and 0 <= n < settings.max_images:
        location = user_jobs.image_location(connection, settings, job_id, n, owner)  # with store_presign only
        if location is not None:
            return RedirectResponse(location, status_code=307)
    png = user_jobs.image_png(connection, settings, job_id, n, owner) if 0 <= n < settings.max_images else None
    if png is None:
        raise ApiError(404, "not_found", f"job {job_id!r} has no image {n} (or it expired)")
    if boxes:
        results = _record(connection, settings, job_id, owner)["results"]  # result n is image n
        if n >= len(results):
            raise ApiError(404, "not_found", f"job {job_id!r} has no detections for image {n}")
        png = draw_detections(png, results[n], scale or 4)
    elif scale not in (None, 1):
        png = images.enlarge(png, scale)
    body = images.convert(png, image_format)
    headers = images.cache_headers(body, f"{job_id}-{n}{'-boxes' if boxes else ''}.{image_format}",
                                  settings.result_ttl)
    if if_none_match and headers["ETag"] in (tag.strip() for tag in if_none_match.split(",")):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type=images.MEDIA_TYPES[image_format], headers=headers)


def draw_detections(png: bytes, result: dict, scale: int = 4) -> bytes:
    """The PNG enlarged ``scale`` times with its detections drawn (``?boxes=true``), each in its kind's colour;
    a record written before detections had kinds draws its boxes as confident."""
    import io

    from PIL import Image

    from optimization.visualize import draw_kinds

    kinds = [(d["box"], d["kind"], d["object"], d["confidence"]) for d in result.get("detections") or []] or \
        [(box, "confident", "", None) for box in result["boxes"]]
    buffer = io.BytesIO()
    draw_kinds(Image.open(io.BytesIO(png)).convert("RGB"), kinds, scale).save(buffer, format="PNG")
    return buffer.getvalue()
