"""The worker side of the job lifecycle: the functions RQ runs (``generate_job``, ``library_job``).

Errors: bad input only a worker can see (``InvalidRequest``) fails the job with ``invalid_request``;
anything else is a bug: the job fails with ``internal``, the traceback goes to the worker's log, and the
worker keeps serving. Torch is imported inside the functions only.
"""

from __future__ import annotations

import logging
import time

import redis
from rq.job import Job, get_current_job

from optimization.config import Policy, Stage
from optimization.errors import DegenerateOutput, InvalidRequest
from optimization.prompts import tokenizer_warnings, with_count

from . import library, objects, stats
from .queue import dequeued, keys
from .records import JobStatus, has_webhook, job_ended, job_interrupted, push_event, save_record, worker_record
from .requests import JobRequest
from .statuses import LearningStatus

log = logging.getLogger("tally.worker")


class _Reporter:
    """Writes a running job's record (``records``: one key, what ``GET /v1/jobs/{id}`` shows) and its event
    stream, each change in one round trip; when it ends, its figures for /metrics."""

    def __init__(self, runtime, job: Job):
        self.runtime, self.job = runtime, job
        self.record = worker_record(runtime.connection, runtime.settings, job)
        self.stage_ends: dict[str, float] = {}  # engine stage -> time of its latest progress event
        self.learn: tuple[str, int] | None = None  # (object, count) of a library miss, learned if the job succeeds

    def update(self, event: dict | None = None, **fields) -> None:
        """Change the record's ``fields`` and, with ``event``, append it to the job's stream."""
        self.record.update(fields)
        with self.runtime.connection.pipeline(transaction=False) as pipe:
            save_record(pipe, self.runtime.settings, self.record)
            if event is not None:
                push_event(pipe, self.runtime.settings, self.job.id, event, has_webhook(self.record))
            pipe.execute()

    def progress(self, event: dict) -> None:
        self.stage_ends[event.get("stage")] = time.time()
        progress = {**self.record["progress"], **{k: v for k, v in event.items() if k != "stage"}}
        self.update(stage=event.get("stage"), progress=progress,
                    event={"status": JobStatus.running, "stage": event.get("stage"), "progress": progress})

    def finish(self, **fields) -> dict:
        timings = {**self.record["timings"], "finished": time.time()}
        status = (JobStatus.canceled if fields.get("canceled") else
                  JobStatus.failed if fields.get("error") else JobStatus.succeeded)
        self.update(**fields, status=status, timings=timings, event={"status": status})
        job_ended(self.runtime.connection, self.runtime.settings, self.record["owner"], self.job.id)
        results, seconds = fields.get("results") or [], stats.stage_durations(timings, self.stage_ends)
        stats.record_finished(self.runtime.connection, self.runtime.settings, self.runtime.model.id, status, seconds,
                              results)
        log.info("job %s %s: %d of %d images verified, %.1f s from submit to finish", self.job.id, status,
                 sum(bool(r.get("verified")) for r in results), len(results), seconds.get("total", 0.0),
                 extra={"job_id": self.job.id, "status": str(status),  # its own id, also when jobs share a batch
                        "seconds": {k: round(v, 3) for k, v in seconds.items()}})
        return {k: v for k, v in fields.items() if k != "results"}


class WorkerStopping(Exception):
    """The worker is shutting down: the job goes back to the front of its queue (RQ's retry, not counted)."""


def generate_job(request: dict) -> dict:
    """Run in a worker: library token lookup, the count engine, PNGs kept (Redis or the object store), the
    record completed."""
    from optimization.optimizer import Canceled

    from .worker import current_runtime

    rt = current_runtime()
    job = get_current_job()
    req = JobRequest.model_validate(request)
    batched = rt.batched.pop(job.id, None)  # (reporter, outcome) when it ran in a batch shared with other jobs
    report = batched[0] if batched else start_job(rt, job, req)
    try:
        outcome = batched[1] if batched else rt.engine.generate_many([engine_request(rt, job, req, report)])[0]
        result = _outcome(outcome)
    except Canceled:
        if not rt.connection.exists(keys(rt.settings).job_cancel(job.id)):  # not the caller: the worker stops
            job.retries_left = (job.retries_left or 0) + 1
            job.enqueue_at_front_on_retry = True
            report.update(status=JobStatus.queued, stage=None, event={"status": JobStatus.queued, "requeued": True})
            raise WorkerStopping(f"job {job.id} goes back to its queue") from None
        return report.finish(canceled=True, stage=None)
    except InvalidRequest as exc:  # bad input that only the worker could see (e.g. an object the detector lacks)
        return report.finish(error={"code": "invalid_request", "message": str(exc)}, stage=None)
    except DegenerateOutput as exc:
        log.error("job %s: %s", job.id, exc)
        return report.finish(error={"code": "degenerate_image", "message": str(exc)}, stage=None)
    except _out_of_memory() as exc:
        log.error("job %s ran out of memory: %s", job.id, exc)
        _free_memory()
        return report.finish(error={"code": "out_of_memory", "message": "the worker ran out of memory for this job; "
                                    "fewer images or a smaller budget may fit"}, stage=None)
    except redis.RedisError:
        raise  # the job store refused a write, not the job's fault: the worker waits, the job is requeued
    except Exception:
        log.exception("job %s failed", job.id)
        return report.finish(error={"code": "internal", "message": "internal error in the worker; it has been logged"},
                             stage=None)
    return _store_results(rt, job, result, report)


def _out_of_memory() -> tuple[type[BaseException], ...]:
    import torch

    return (MemoryError, torch.cuda.OutOfMemoryError)


def _free_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def start_job(rt, job: Job, req: JobRequest) -> _Reporter:
    """The job leaves its queue and runs: its record and stream say so. Its deadline is its first start plus
    its budget's seconds: a retried job gets what is left, not a new budget."""
    report = _Reporter(rt, job)
    now = time.time()
    report.update(status=JobStatus.running, stage=Stage.sampling,
                  deadline=report.record.get("deadline") or now + req.budget.max_seconds,
                  timings={**report.record["timings"], "started": now},
                  event={"status": JobStatus.running, "stage": Stage.sampling})
    dequeued(rt.connection, rt.settings, req.model, job.id)
    return report


def _outcome(outcome):
    """An engine outcome: the result, or the exception that ended the request, raised here."""
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


def engine_request(rt, job: Job, req: JobRequest, report: _Reporter):
    """The library lookup (scheduling learning on a miss), the record's token and warnings, and what the
    engine is asked."""
    from optimization.engine import GenerationRequest

    engine = rt.engine
    k = keys(rt.settings)
    cls = engine.resolve_object(req.prompt, req.object)
    token = rt.store.token_for(engine, cls, req.count)  # None, or a token this engine can use (``check_token``)
    if token is None and Policy(req.policy).uses_token:  # learned once the job has succeeded (``_store_results``)
        report.learn = (cls, req.count)
    report.update(token={"key": engine.token_key(cls, req.count).id, "library_hit": token is not None,
                         "learning_scheduled": False},
                  warnings=tokenizer_warnings(with_count(req.prompt, cls, req.count),
                                              [tokenizer for _, tokenizer, _ in engine.t2i.encoders()]))
    return GenerationRequest(req.prompt, req.count, object_=cls, num_images=req.num_images, seed=req.seed,
                             budget=req.budget, policy=req.policy, token=token, progress=report.progress,
                             should_stop=lambda: rt.shutdown.is_set() or bool(rt.connection.exists(k.job_cancel(job.id))),
                             deadline=report.record.get("deadline"))


def _store_results(rt, job: Job, result, report: _Reporter) -> dict:
    """The images kept, the library miss followed up (only a job that succeeded starts learning: a canceled
    or failed one leaves nothing behind), the record completed."""
    from optimization.visualize import png_bytes

    k = keys(rt.settings)
    token = report.record["token"]
    if token is not None:
        scheduled = report.learn is not None and library.schedule(
            rt.connection, rt.settings, rt.model.id, *report.learn, token["key"])
        stats.record_library_lookup(rt.connection, rt.settings, rt.model.id, token["library_hit"], scheduled)
        report.record["token"] = {**token, "learning_scheduled": scheduled}
    results = []
    with rt.connection.pipeline() as pipe:
        for n, image in enumerate(result.images):
            objects.save_image(pipe, rt.settings, job.id, n, png_bytes(image.image))  # Redis, or the object store
            results.append({**image.to_dict(), "index": n})
        pipe.hincrby(k.metrics(), "optimization_iterations", result.cost["iterations"])
        pipe.hincrbyfloat(k.metrics(), "engine_seconds", result.cost["seconds"])
        pipe.hincrby(k.metrics(), "candidates", result.cost["candidates"])
        pipe.execute()
    return report.finish(results=results, cost=result.cost, stage=None, prompt=result.prompt, object=result.object,
                         budget_exhausted=result.budget_exhausted)


def library_job(model_id: str, cls: str, count: int, key_id: str) -> dict:
    """Run in a worker at low priority: one slice of learning the library token of one key."""
    from .worker import current_runtime

    return library.run_slice(current_runtime(), model_id, cls, count, key_id)


def generation_failed(job: Job, connection, exc_type, *exc_info) -> None:
    """RQ failure callback of generation jobs (also run for jobs abandoned by a dead worker, by
    ``recovery``): a failure that the job's own handlers did not record (its worker died, RQ's job timeout)
    is written to its record: queued again while RQ retries it, else failed."""
    if exc_type is not None and issubclass(exc_type, WorkerStopping):
        return  # the job put itself back, and its record says so
    job_interrupted(connection, _settings(), job.id, retried=bool(job.retries_left))


def _settings():
    """The worker's settings (a callback gets none): the running worker's, else the environment's."""
    from . import worker
    from .settings import get_settings

    return worker._runtime.settings if worker._runtime is not None else get_settings()


def release_library_lock(job: Job, connection, *exc_info) -> None:
    """RQ failure callback (also run for tasks abandoned by a dead worker): the next miss may start another."""
    from .settings import get_settings

    library.conclude(connection, get_settings(), job.meta["key"], LearningStatus.failed)
