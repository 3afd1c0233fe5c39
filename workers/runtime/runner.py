"""``JobRunner``: one worker's resident models and connections, and how it runs a generation job.

A job runs alone, or with the jobs queued right behind it in shared pipeline batches (``run_together``); RQ
then performs each job, and ``generate`` finds its outcome ready. Either way the job's record and event
stream follow it (``Reporter``), its images are stored and a library miss is followed up.

RQ calls job functions by import path (``tasks``), so the worker's runner is found through ``current()``,
set once by ``process.run_worker``.
"""

from __future__ import annotations

import logging
import threading
import time

import redis
from rq.job import Job

from optimization.config import ModelSpec, Policy, Stage
from optimization.errors import DegenerateOutput, InvalidRequest

from .. import library, logs, objects, stats
from ..queue import connect, dequeued, keys
from ..records import JobStatus, push_event, save_record, worker_record
from ..settings import Settings
from ..tokens import TokenStore
from ..user_jobs import job_ended

log = logging.getLogger("tally.worker")


class WorkerStopping(Exception):
    """The worker is shutting down: the job goes back to the front of its queue (RQ's retry, not counted)."""


class Reporter:
    """Writes a running job's record (``records``: one key, what ``GET /v1/jobs/{id}`` shows) and its event
    stream, each change in one round trip; when it ends, its figures for /metrics."""

    def __init__(self, runner: JobRunner, job: Job):
        self.runner, self.job = runner, job
        self.record = worker_record(runner.connection, runner.settings, job.id)
        self.request = self.record.request
        self.stage_ends: dict[str, float] = {}  # engine stage -> time of its latest progress event
        self.learn: tuple[str, int] | None = None  # (object, count) of a library miss, learned if the job succeeds

    def update(self, event: dict | None = None, **fields) -> None:
        """Change the record's ``fields`` and, with ``event``, append it to the job's stream."""
        self.record.change(**fields)
        with self.runner.connection.pipeline(transaction=False) as pipe:
            save_record(pipe, self.runner.settings, self.record)
            if event is not None:
                push_event(pipe, self.runner.settings, self.job.id, event, self.record.has_webhook)
            pipe.execute()

    def progress(self, event: dict) -> None:
        self.stage_ends[event.get("stage")] = time.time()
        progress = {**self.record.progress, **{k: v for k, v in event.items() if k != "stage"}}
        self.update(stage=event.get("stage"), progress=progress,
                    event={"status": JobStatus.running, "stage": event.get("stage"), "progress": progress})

    def finish(self, **fields) -> dict:
        runner, timings = self.runner, {**self.record.timings, "finished": time.time()}
        status = (JobStatus.canceled if fields.get("canceled") else
                  JobStatus.failed if fields.get("error") else JobStatus.succeeded)
        self.update(**fields, status=status, timings=timings, event={"status": status})
        job_ended(runner.connection, runner.settings, self.record.owner, self.job.id)
        results, seconds = fields.get("results") or [], stats.stage_durations(timings, self.stage_ends)
        stats.record_finished(runner.connection, runner.settings, runner.model.id, status, seconds, results)
        log.info("job %s %s: %d of %d images verified, %.1f s from submit to finish", self.job.id, status,
                 sum(bool(r.get("verified")) for r in results), len(results), seconds.get("total", 0.0),
                 extra={"job_id": self.job.id, "status": str(status),  # its own id, also when jobs share a batch
                        "seconds": {k: round(v, 3) for k, v in seconds.items()}})
        return {k: v for k, v in fields.items() if k != "results"}


class JobRunner:
    """A worker's settings, model entry, Redis connection, count engine and token store, loaded once."""

    def __init__(self, settings: Settings, model: ModelSpec, connection: redis.Redis, engine, store: TokenStore):
        self.settings, self.model, self.connection = settings, model, connection
        self.engine = engine  # optimization.engine.CountEngine
        self.store = store
        self.shutdown = threading.Event()  # set by SIGTERM / Ctrl-C: the running job stops at its next check
        self._ready: dict[str, tuple[Reporter, object]] = {}  # job id -> (reporter, outcome) of a shared batch

    @classmethod
    def load(cls, settings: Settings, model_id: str | None = None) -> JobRunner:
        from optimization.engine import CountEngine

        model = settings.model(model_id)
        connection = connect(settings, blocking=True)
        logs.quiet_model_loading()  # a loading bar in a log of JSON lines is a line no collector can read
        engine = CountEngine.from_spec(model, refine_config=settings.refine, noise_config=settings.noise)
        return cls(settings, model, connection, engine, TokenStore.for_settings(settings, connection))

    def install(self) -> None:
        """Make this the runner that ``tasks`` use in this process."""
        global _current
        _current = self

    # ------------------------------------------------------------------------------------------ running
    def run_together(self, jobs: list[Job]) -> None:
        """Start every job and run them in shared batches; each outcome waits for RQ to perform its job."""
        entries = []
        for job in jobs:
            try:
                report = self._start(job)
            except redis.RedisError:
                raise  # the job store, not the job: the worker waits and these jobs are recovered
            except Exception as exc:  # noqa: BLE001 - no record to run from: RQ fails that job alone
                self._ready[job.id] = (None, exc)
                continue
            try:
                entries.append((job, report, self._engine_request(job, report)))
            except Exception as exc:  # noqa: BLE001 - that job's outcome, raised when RQ performs it
                self._ready[job.id] = (report, exc)
        outcomes = self.engine.generate_many([request for _, _, request in entries], self.settings.batch_size)
        for (job, report, _), outcome in zip(entries, outcomes):
            self._ready[job.id] = (report, outcome)
        log.info("ran %d jobs in shared batches", len(jobs))

    def generate(self, job: Job) -> dict:
        """Run one job (or take its outcome from a shared batch): the library token lookup, the count engine,
        the PNGs kept (Redis or the object store), the record completed."""
        from optimization.optimizer import Canceled

        ready = self._ready.pop(job.id, None)
        if ready and ready[0] is None:
            raise ready[1]  # it could not start: nothing to report to
        report = ready[0] if ready else self._start(job)
        try:
            outcome = ready[1] if ready else self.engine.generate_many([self._engine_request(job, report)])[0]
            if isinstance(outcome, BaseException):
                raise outcome
        except Canceled:
            if not self.connection.exists(keys(self.settings).job_cancel(job.id)):  # the worker stops, not the caller
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
            return report.finish(error={"code": "out_of_memory", "message": "the worker ran out of memory for this "
                                        "job; fewer images or a smaller budget may fit"}, stage=None)
        except redis.RedisError:
            raise  # the job store refused a write, not the job's fault: the worker waits, the job is requeued
        except Exception:
            log.exception("job %s failed", job.id)
            return report.finish(error={"code": "internal", "message": "internal error in the worker; it has been "
                                        "logged"}, stage=None)
        return self._store_results(job, outcome, report)

    def _start(self, job: Job) -> Reporter:
        """The job leaves its queue and runs: its record and stream say so. Its deadline is its first start plus
        its budget's seconds: a retried job gets what is left, not a new budget."""
        report = Reporter(self, job)
        now = time.time()
        report.update(status=JobStatus.running, stage=Stage.sampling,
                      deadline=report.record.deadline or now + report.request.budget.max_seconds,
                      timings={**report.record.timings, "started": now},
                      event={"status": JobStatus.running, "stage": Stage.sampling})
        dequeued(self.connection, self.settings, report.request.model, job.id)
        return report

    def _engine_request(self, job: Job, report: Reporter):
        """The library lookup (a miss is learned once the job has succeeded), the record's token and warnings,
        and what the engine is asked."""
        from optimization.job import GenerationRequest

        engine, req, cancel_key = self.engine, report.request, keys(self.settings).job_cancel(job.id)
        cls = req.object or engine.resolve_object(req.prompt, None)  # the API resolves it when it knows the classes
        token = self.store.token_for(engine, cls, req.count)  # None, or a token this engine can use
        if token is None and Policy(req.policy).uses_token:
            report.learn = (cls, req.count)
        report.update(token={"key": engine.token_key(cls, req.count).id, "library_hit": token is not None,
                             "learning_scheduled": False},
                      warnings=engine.prompt_warnings(req.prompt, cls, req.count))
        return GenerationRequest(req.prompt, req.count, object_=cls, num_images=req.num_images, seed=req.seed,
                                 budget=req.budget, policy=req.policy, token=token, progress=report.progress,
                                 should_stop=lambda: self.shutdown.is_set() or bool(self.connection.exists(cancel_key)),
                                 deadline=report.record.deadline)

    def _store_results(self, job: Job, result, report: Reporter) -> dict:
        """The images kept, the library miss followed up (only a job that succeeded starts learning: a canceled
        or failed one leaves nothing behind), the record completed."""
        from optimization.visualize import png_bytes

        token = report.record.token
        if token is not None:
            scheduled = report.learn is not None and library.schedule(
                self.connection, self.settings, self.model.id, *report.learn, token["key"])
            stats.record_library_lookup(self.connection, self.settings, self.model.id, token["library_hit"], scheduled)
            report.record.token = {**token, "learning_scheduled": scheduled}
        results = []
        with self.connection.pipeline() as pipe:
            for n, image in enumerate(result.images):
                objects.save_image(pipe, self.settings, job.id, n, png_bytes(image.image))  # Redis, or the object store
                results.append({**image.to_dict(), "index": n})
            stats.add(pipe, self.settings, "optimization_iterations", int(result.cost["iterations"]))
            stats.add(pipe, self.settings, "engine_seconds", float(result.cost["seconds"]))
            stats.add(pipe, self.settings, "candidates", int(result.cost["candidates"]))
            pipe.execute()
        return report.finish(results=results, cost=result.cost, stage=None, prompt=result.prompt,
                             object=result.object, budget_exhausted=result.budget_exhausted)


def _out_of_memory() -> tuple[type[BaseException], ...]:
    import torch

    return (MemoryError, torch.cuda.OutOfMemoryError)


def _free_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


_current: JobRunner | None = None


def current() -> JobRunner:
    if _current is None:
        raise RuntimeError("no job runner: job functions run inside `tally worker`")
    return _current


def current_settings() -> Settings:
    """The running worker's settings, else the environment's (an RQ failure callback is given none)."""
    from ..settings import get_settings

    return _current.settings if _current is not None else get_settings()
