"""/v1/jobs: submit, watch (record and event stream), fetch images, cancel."""

from __future__ import annotations

import json
import time
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import Response, StreamingResponse

from workers import records
from workers.requests import build_request

from ..deps import OwnerDep, RedisDep, SettingsDep
from ..errors import ApiError
from ..schemas import Error, JobAccepted, JobCreate, JobOut

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
NOT_FOUND = {404: {"model": Error, "description": "No such job for this caller."}}


def _record_out(record: dict, request: Request) -> JobOut:
    req = record["request"]
    results = [{**r, "url": str(request.url_for("job_image", job_id=record["id"], n=r["index"]))}
               for r in record["results"]]
    return JobOut(id=record["id"], status=record["status"], stage=record["stage"],
                  queue_position=record["queue_position"], model=record["model"],
                  prompt=record.get("prompt") or req["prompt"], object=record.get("object") or req.get("object"),
                  count=req["count"], policy=req["policy"], progress=record["progress"], token=record["token"],
                  results=results, cost=record["cost"], timings=record["timings"] or {}, error=record["error"])


@router.post("", status_code=202, response_model=JobAccepted,
             responses={409: {"model": Error}, 422: {"model": Error}, 503: {"model": Error}})
def create_job(body: JobCreate, request: Request, settings: SettingsDep, connection: RedisDep, owner: OwnerDep,
               idempotency_key: Annotated[str | None, Header(max_length=200)] = None) -> JobAccepted:
    req = build_request(settings, prompt=body.prompt, count=body.count, object_=body.object,
                        num_images=body.num_images, seed=body.seed, model=body.model, policy=body.policy,
                        budget=body.budget.model_dump() if body.budget else None,
                        classes_of=lambda spec: records.model_classes(connection, settings, spec),
                        idempotency_key=idempotency_key)
    try:
        submitted = records.submit(connection, settings, req, owner, idempotency_key)
    except records.IdempotencyConflict as exc:
        raise ApiError(409, "idempotency_conflict", str(exc)) from None
    links = {"self": str(request.url_for("get_job", job_id=submitted.job_id)),
             "events": str(request.url_for("job_events", job_id=submitted.job_id)),
             "images": str(request.url_for("get_job", job_id=submitted.job_id)) + "/images/{n}"}
    return JobAccepted(id=submitted.job_id, status=records.JobStatus.queued, links=links)


def _record(connection, settings, job_id: str, owner: str) -> dict:
    record = records.job_record(connection, settings, job_id, owner)
    if record is None:
        raise ApiError(404, "not_found", f"no job {job_id!r}")
    return record


@router.get("/{job_id}", response_model=JobOut, responses=NOT_FOUND)
def get_job(job_id: str, request: Request, settings: SettingsDep, connection: RedisDep, owner: OwnerDep) -> JobOut:
    return _record_out(_record(connection, settings, job_id, owner), request)


@router.delete("/{job_id}", response_model=JobOut, responses=NOT_FOUND)
def cancel_job(job_id: str, request: Request, settings: SettingsDep, connection: RedisDep, owner: OwnerDep) -> JobOut:
    record = records.cancel(connection, settings, job_id, owner)
    if record is None:
        raise ApiError(404, "not_found", f"no job {job_id!r}")
    return _record_out(record, request)


@router.get("/{job_id}/events", responses={200: {"content": {"text/event-stream": {}}}, **NOT_FOUND})
def job_events(job_id: str, request: Request, settings: SettingsDep, connection: RedisDep, owner: OwnerDep,
               last_event_id: Annotated[int | None, Header()] = None):
    """Server-Sent Events: one ``progress`` event per change, in order, then one ``final`` event."""
    _record(connection, settings, job_id, owner)

    def stream():
        seen = (last_event_id + 1) if last_event_id is not None else 0
        while True:
            for event in records.events_since(connection, settings, job_id, seen):
                yield f"id: {seen}\nevent: progress\ndata: {json.dumps(event)}\n\n"
                seen += 1
            record = records.job_record(connection, settings, job_id, owner)
            if record is None or record["status"] in records.TERMINAL:
                for event in records.events_since(connection, settings, job_id, seen):  # the last ones, in order
                    yield f"id: {seen}\nevent: progress\ndata: {json.dumps(event)}\n\n"
                    seen += 1
                final = _record_out(record, request).model_dump(mode="json") if record else {"status": "expired"}
                yield f"event: final\ndata: {json.dumps(final)}\n\n"
                return
            time.sleep(0.1)

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


@router.get("/{job_id}/images/{n}", name="job_image", responses={200: {"content": {"image/png": {}}}, **NOT_FOUND})
def job_image(job_id: str, n: int, settings: SettingsDep, connection: RedisDep, owner: OwnerDep,
              boxes: Annotated[bool, Query(description="Draw the detections.")] = False) -> Response:
    png = records.image_png(connection, settings, job_id, n, owner)
    if png is None:
        raise ApiError(404, "not_found", f"job {job_id!r} has no image {n} (or it expired)")
    if boxes:
        record = _record(connection, settings, job_id, owner)
        png = records.draw_detections(png, record["results"][n]["boxes"])
    return Response(png, media_type="image/png")
