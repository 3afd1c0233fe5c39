"""The job lifecycle: submit (with idempotency), the job record the API shows, cancel, and the two job
functions workers run (``generate_job``, ``library_job``).

A job is an RQ job; Tally's record lives in its ``meta`` (owner, request, stage, progress, token, results,
cost, timings, error). Progress events are also appended to a Redis list so that a client following the
event stream sees every change in order. Images are PNGs in Redis with the result TTL.
This module imports torch only inside the job functions, which run in workers.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from dataclasses import dataclass

import redis
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus, get_current_job

from .queue import enqueue_generation, generation_queue, keys, schedule_library
from .settings import Settings

TERMINAL = {"succeeded", "failed", "canceled"}


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


def resolve_object(info: dict | None, prompt: str, object_: str | None) -> str | None:
    """The detector class a request asks for; ValueError if unknown or ambiguous. Without model info (no
    worker ever started) the worker resolves it instead and None is returned."""
    from optimization.prompts import object_in_prompt, resolve_class

    if info is None:
        return object_
    return resolve_class(object_, info["classes"]) if object_ else object_in_prompt(prompt, info["classes"])


# ------------------------------------------------------------------------------------------------- submit
def submit(connection: redis.Redis, settings: Settings, request: dict, owner: str,
           idempotency_key: str | None = None) -> Submitted:
    """Queue a generation job; the same idempotency key with the same request returns the same job."""
    k = keys(settings)
    job_id = uuid.uuid4().hex
    if idempotency_key:
        body = hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()
        slot = k.idempotency(owner, idempotency_key)
        if not connection.set(slot, json.dumps({"job": job_id, "body": body}), nx=True, ex=settings.result_ttl):
            previous = json.loads(connection.get(slot) or "{}")
            if previous.get("body") != body:
                raise IdempotencyConflict(f"idempotency key {idempotency_key!r} was used for a different request")
            return Submitted(previous["job"], created=False)
    meta = {"owner": owner, "request": request, "model": request["model"], "stage": None,
            "progress": {"images_verified": 0, "candidates": 0, "iterations": 0, "loss": None, "detected_counts": []},
            "token": None, "results": [], "cost": None, "timings": {"submitted": time.time()}, "error": None}
    enqueue_generation(connection, settings, request["model"], request, meta, job_id)
    _push_event(connection, settings, job_id, {"status": "queued"})
    connection.hincrby(k.metrics(), "jobs_submitted", 1)
    return Submitted(job_id, created=True)


# ------------------------------------------------------------------------------------------------- record
def _fetch(connection: redis.Redis, job_id: str, owner: str) -> Job | None:
    try:
        job = Job.fetch(job_id, connection=connection)
    except NoSuchJobError:
        return None
    return job if job.meta.get("owner") == owner else None  # another owner's job does not exist for you


def status_of(job: Job) -> str:
    meta = job.meta
    rq_status = job.get_status(refresh=False)
    if meta.get("canceled") or rq_status in (JobStatus.CANCELED, JobStatus.STOPPED):
        return "canceled"
    if rq_status == JobStatus.FINISHED:
        return "failed" if meta.get("error") else "succeeded"
    if rq_status == JobStatus.FAILED:
        return "failed"
    if rq_status == JobStatus.STARTED:
        return "running"
    return "queued"


def job_record(connection: redis.Redis, settings: Settings, job_id: str, owner: str) -> dict | None:
    """What ``GET /v1/jobs/{id}`` shows; None when the job does not exist for this owner."""
    job = _fetch(connection, job_id, owner)
    if job is None:
        return None
    meta = job.meta
    status = status_of(job)
    error = meta.get("error")
    if status == "failed" and error is None:
        # The job raised or its worker died and no retry was left; the traceback stays in the worker log.
        error = {"code": "internal", "message": "the job failed in the worker; it was retried and gave up"}
    position = None
    if status == "queued":
        position = job.get_position()
    return {"id": job.id, "status": status, "stage": meta.get("stage") if status == "running" else None,
            "queue_position": position, "model": meta.get("model"), "request": meta.get("request"),
            "progress": meta.get("progress"), "token": meta.get("token"), "results": meta.get("results") or [],
            "cost": meta.get("cost"), "timings": meta.get("timings"), "error": error, "owner": meta.get("owner"),
            "prompt": meta.get("prompt"), "object": meta.get("object")}


def events_since(connection: redis.Redis, settings: Settings, job_id: str, start: int) -> list[dict]:
    return [json.loads(e) for e in connection.lrange(keys(settings).job_events(job_id), start, -1)]


def _push_event(connection: redis.Redis, settings: Settings, job_id: str, event: dict) -> None:
    key = keys(settings).job_events(job_id)
    with connection.pipeline() as pipe:
        pipe.rpush(key, json.dumps({**event, "time": round(time.time(), 3)}))
        pipe.expire(key, settings.result_ttl)
        pipe.execute()


# ------------------------------------------------------------------------------------------------- cancel
def cancel(connection: redis.Redis, settings: Settings, job_id: str, owner: str) -> dict | None:
    """A queued job never runs; a running one stops within one iteration (the engine polls the flag)."""
    job = _fetch(connection, job_id, owner)
    if job is None:
        return None
    status = status_of(job)
    if status == "queued":
        try:
            job.cancel()
        except InvalidJobOperation:
            pass  # it started meanwhile: the flag below stops it
        job.meta["canceled"] = True
        job.save_meta()
    if status in ("queued", "running"):
        connection.set(keys(settings).job_cancel(job_id), 1, ex=settings.result_ttl)
        _push_event(connection, settings, job_id, {"status": "canceling"})
    return job_record(connection, settings, job_id, owner)


def image_png(connection: redis.Redis, settings: Settings, job_id: str, n: int, owner: str) -> bytes | None:
    if _fetch(connection, job_id, owner) is None:
        return None
    return connection.get(keys(settings).job_images(job_id, n))


def draw_detections(png: bytes, boxes: list) -> bytes:
    """The PNG enlarged with its detections drawn (``?boxes=true``)."""
    import io

    from PIL import Image

    from optimization.visualize import draw_boxes

    buffer = io.BytesIO()
    draw_boxes(Image.open(io.BytesIO(png)).convert("RGB"), boxes).save(buffer, format="PNG")
    return buffer.getvalue()


def queue_depth(connection: redis.Redis, model_id: str) -> int:
    return len(generation_queue(connection, model_id))


# ---------------------------------------------------------------------------------------- job functions
class _Reporter:
    """Writes a running job's record (meta) and its event stream."""

    def __init__(self, runtime, job: Job):
        self.runtime, self.job = runtime, job

    def update(self, **fields) -> None:
        self.job.meta.update(fields)
        self.job.save_meta()

    def progress(self, event: dict) -> None:
        progress = {**self.job.meta["progress"], **{k: v for k, v in event.items() if k != "stage"}}
        self.update(stage=event.get("stage"), progress=progress)
        _push_event(self.runtime.connection, self.runtime.settings, self.job.id,
                    {"status": "running", "stage": event.get("stage"), "progress": progress})

    def finish(self, **fields) -> dict:
        timings = {**self.job.meta["timings"], "finished": time.time()}
        self.update(**fields, timings=timings)
        return {k: v for k, v in fields.items() if k != "results"}


def generate_job(request: dict) -> dict:
    """Run in a worker: library token lookup, the count engine, PNGs to Redis, the record completed."""
    from optimization.count_token import CountToken
    from optimization.engine import Budget
    from optimization.optimizer import Canceled
    from optimization.visualize import png_bytes

    from .worker import current_runtime

    rt = current_runtime()
    job = get_current_job()
    k = keys(rt.settings)
    report = _Reporter(rt, job)
    report.update(stage="sampling", timings={**job.meta["timings"], "started": time.time()})
    engine = rt.engine
    try:
        cls = engine.resolve_object(request["prompt"], request.get("object"))
        key = engine.token_key(cls, request["count"])
        data = rt.store.get(key.id)
        token = CountToken.from_bytes(data, expected_model=engine.t2i.fingerprint) if data else None
        rt.connection.hincrby(k.metrics(), "cache_hits" if token else "cache_misses", 1)
        scheduled = False
        if token is None and request["policy"] in ("library", "refine"):
            scheduled = schedule_library(rt.connection, rt.settings, rt.model.id, cls, request["count"], key.id)
        report.update(token={"key": key.id, "library_hit": token is not None, "learning_scheduled": scheduled})
        result = engine.generate(request["prompt"], request["count"], object_=cls, num_images=request["num_images"],
                                 seed=request["seed"], budget=Budget(**request["budget"]), policy=request["policy"],
                                 token=token, progress=report.progress,
                                 should_stop=lambda: bool(rt.connection.exists(k.job_cancel(job.id))))
    except Canceled:
        return report.finish(canceled=True, stage=None)
    except ValueError as exc:  # bad input that only the worker could see (e.g. an object the detector lacks)
        return report.finish(error={"code": "invalid_request", "message": str(exc)}, stage=None)

    results = []
    with rt.connection.pipeline() as pipe:
        for n, image in enumerate(result.images):
            pipe.set(k.job_images(job.id, n), png_bytes(image.image), ex=rt.settings.result_ttl)
            results.append({**image.to_dict(), "index": n})
        pipe.hincrby(k.metrics(), "optimization_iterations", result.cost["iterations"])
        pipe.hincrbyfloat(k.metrics(), "engine_seconds", result.cost["seconds"])
        pipe.hincrby(k.metrics(), "candidates", result.cost["candidates"])
        pipe.execute()
    return report.finish(results=results, cost=result.cost, stage=None, prompt=result.prompt, object=result.object)


def library_job(model_id: str, cls: str, count: int, key_id: str) -> dict:
    """Run in a worker at low priority: learn the library token for one key and store it."""
    from optimization.optimizer import OptimizeConfig

    from .worker import current_runtime

    rt = current_runtime()
    lib = rt.settings.library
    config = OptimizeConfig(mode="library", lr=lib.lr, max_iterations=lib.iterations,
                            seeds_per_iteration=lib.seeds_per_iteration, validation_seeds=lib.validation_seeds,
                            validate_every=lib.validate_every)
    try:
        token = rt.engine.learn_library_token(cls, count, config)
        info = rt.store.put(token.to_bytes())
    finally:
        rt.connection.delete(keys(rt.settings).library_lock(key_id))
    return {"key": info["key"], "validation": token.metadata.get("validation")}


def release_library_lock(job: Job, connection: redis.Redis, *exc_info) -> None:
    """RQ failure callback (also run for tasks abandoned by a dead worker): the next miss may start another."""
    from .settings import get_settings

    connection.delete(keys(get_settings()).library_lock(job.meta["key"]))
