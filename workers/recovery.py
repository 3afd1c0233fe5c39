"""Jobs whose worker died: found by the workers' own heartbeats (seconds), not by the job timeout (RQ's
abandoned-job rule waits job timeout + 60 s), then handed to RQ's abandoned-job handling, which retries
them while retries are left (else fails them) and runs their failure callbacks (library locks are
released that way, and a user job's record says queued or failed). Every worker runs this at start, when
it reconnects, and every few seconds (from its heartbeat thread: the callbacks' time limit is a timer
there, not SIGALRM, which only the main thread may set)."""

from __future__ import annotations

import json
import logging
import os
import socket
import time

import redis
from rq.exceptions import NoSuchJobError
from rq.executions import Execution
from rq.job import Job
from rq.job import JobStatus as RQStatus
from rq.registry import StartedJobRegistry
from rq.timeouts import TimerDeathPenalty

from .queue import dequeued, generation_queue, keys, library_queue, live_workers
from .records import TERMINAL, JobStatus, job_interrupted, push_event, read_record, save_record
from .settings import Settings

log = logging.getLogger("tally.worker")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def worker_alive(connection: redis.Redis, settings: Settings, model_id: str, name: str | None) -> bool:
    """A worker is alive while its heartbeat key lives and, on this host, its process exists."""
    if not name:
        return False
    raw = connection.get(keys(settings).worker(model_id, name))
    if raw is None:
        return False
    info = json.loads(raw)
    return info.get("host") != socket.gethostname() or _pid_alive(int(info.get("pid", 0)))


def recover_orphans(connection: redis.Redis, settings: Settings, model_id: str, starting: str | None = None) -> list[str]:
    """Retry (or fail) the started jobs of ``model_id`` whose worker is dead; ``starting``: the name of a
    worker that is (re)starting and so runs nothing, whose leftover jobs are orphans too."""
    recovered = []
    for queue in (generation_queue(connection, settings, model_id), library_queue(connection, settings, model_id)):
        registry = StartedJobRegistry(queue=queue, death_penalty_class=TimerDeathPenalty)
        orphans = []
        for job_id, execution_id in registry.get_job_and_execution_ids():
            try:
                job = Job.fetch(job_id, connection=connection)
            except NoSuchJobError:
                continue
            runner = _runner(connection, job, execution_id)
            if runner == starting or not worker_alive(connection, settings, model_id, runner):
                orphans.append(job)
                # Expire the entry now: RQ's cleanup then treats it as abandoned.
                connection.zadd(registry.key, {f"{job_id}:{execution_id}": 0}, xx=True)
        if not orphans:
            continue
        registry.cleanup()
        for job in orphans:
            retried = Job.fetch(job.id, connection=connection).get_status() != RQStatus.FAILED
            if queue.name == keys(settings).generation_queue(model_id):
                # The failure callback wrote the record; this covers a callback that could not run.
                job_interrupted(connection, settings, job.id, retried)
                status = getattr(read_record(connection, settings, job.id), "status", None)
            else:
                status = JobStatus.queued if retried else JobStatus.failed
            log.warning("job %s: its worker %s died; now %s", job.id, job.worker_name, status)
            recovered.append(job.id)
    return recovered


def _runner(connection: redis.Redis, job: Job, execution_id: str) -> str | None:
    """The worker of this execution: RQ records it with the execution, in the transaction that adds the
    registry entry (the job's own ``worker_name`` comes later, and not at all for a batch's companions)."""
    try:
        return Execution.fetch(execution_id, job.id, connection).worker_name or job.worker_name
    except ValueError:  # the execution is gone: only the job can say
        return job.worker_name


UPKEEP_JOBS = 100  # queued jobs of a model looked at per upkeep period

NO_WORKER = {"code": "no_worker", "message": "no worker served this job's model for no_worker_timeout_s; submit it "
                                            "again when one runs (GET /v1/models shows live workers)"}


def fail_jobs_without_worker(connection: redis.Redis, settings: Settings) -> list[str]:
    """Jobs end: the queued and running jobs of each model that has had no live worker for
    ``no_worker_timeout_s`` (counted from its last heartbeat, or from the job's submit or start if later)
    fail with ``no_worker`` and leave its queue, so that no worker starting later runs them. Run by the
    API (``service.app``), since no worker of that model is there to do it."""
    k, now, failed = keys(settings), time.time(), []
    for model in settings.models:
        last_beat = float(connection.get(k.model_last_beat(model.id)) or 0)
        if now - last_beat < settings.no_worker_timeout_s or live_workers(connection, settings, model.id):
            continue  # no job of this model can be due yet
        queue = generation_queue(connection, settings, model.id)
        started = StartedJobRegistry(queue=queue, death_penalty_class=TimerDeathPenalty)
        entries = {job_id: f"{job_id}:{execution_id}"
                   for job_id, execution_id in started.get_job_and_execution_ids(cleanup=False)}
        # The oldest first, a bounded number per period: the upkeep runs beside the API's requests.
        for job_id in [*entries, *queue.get_job_ids(0, UPKEEP_JOBS - 1)]:
            record = read_record(connection, settings, job_id)
            if record is None or record.status in TERMINAL:
                continue
            since = max(last_beat, record.timings.get("submitted") or 0, record.timings.get("started") or 0)
            if now - since < settings.no_worker_timeout_s:
                continue
            queue.remove(job_id)
            if job_id in entries:
                connection.zrem(started.key, entries[job_id])
            dequeued(connection, settings, model.id, job_id)
            record.change(status=JobStatus.failed, stage=None, error=NO_WORKER)
            with connection.pipeline() as pipe:
                save_record(pipe, settings, record)
                push_event(pipe, settings, job_id, {"status": JobStatus.failed}, record.has_webhook)
                pipe.srem(k.owner_active(record.owner), job_id)
                pipe.execute()
            log.warning("job %s failed: model %s has had no live worker for %.0f s", job_id, model.id, now - since)
            failed.append(job_id)
    return failed


def upkeep(connection: redis.Redis, settings: Settings, period_s: float) -> None:
    """What no worker can be relied on for, done by one API process per period: the jobs of models without
    a live worker end (``fail_jobs_without_worker``), and a token library lost with a Redis flush is indexed
    again from its store (workers do it only when they start)."""
    k = keys(settings)
    if not connection.set(k.upkeep(), os.getpid(), nx=True, px=max(1, int(period_s * 1000))):
        return  # another API process has it this period
    fail_jobs_without_worker(connection, settings)
    if not connection.exists(k.token_library_indexed()):
        from .tokens import TokenStore

        log.warning("token library indexed again from the store: %d token(s)",
                    TokenStore.for_settings(settings, connection).reseed())
