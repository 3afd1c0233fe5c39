"""``tally worker``: one process per GPU, models loaded once and kept resident, RQ without forking.

CUDA is not fork-safe and loading a pipeline costs seconds, so the worker is an RQ ``SimpleWorker`` that
runs jobs in its own process. It listens to its model's user queue before the library queue (user jobs
first), publishes the model's fingerprint and classes for the API, keeps a heartbeat key alive for
``/readyz``, ``/v1/models`` and orphan detection, and re-seeds Redis from the durable token files
(their directory, or the object store's ``tokens/``).

Lifecycle: a stale registration of the same name (a killed predecessor) is cleared at start; jobs of dead
workers are recovered at start and every few seconds (``recovery``); a lost, full, read-only or loading Redis
is waited for with backoff, never a reason to exit; SIGTERM or Ctrl-C interrupts the running job at its next check, puts it
back at the front of its queue, and exits. Logs: lines on stderr, JSON by default, stamped with the worker,
its model and the running job's id (``logs``).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import signal
import threading
import time

import redis
from rq import SimpleWorker
from rq.worker import WorkerStatus

from .. import logs, webhooks
from ..queue import beat, generation_queue, keys, library_queue, redis_trouble, unregister
from ..recovery import recover_orphans, worker_alive
from ..settings import Settings
from . import batching
from .runner import JobRunner

log = logging.getLogger("tally.worker")


class TallyWorker(SimpleWorker):
    """RQ's in-process worker whose stop signal also interrupts the running job at its next check, and whose
    log records while a job runs (RQ's own included) carry the job id."""

    runner: JobRunner

    @classmethod
    def serving(cls, runner: JobRunner, queues, name: str | None = None) -> "TallyWorker":
        worker = cls(queues, connection=runner.connection, name=name)
        worker.runner = runner
        return worker

    def request_stop(self, signum, frame):
        self.runner.shutdown.set()
        super().request_stop(signum, frame)

    def execute_job(self, job, queue):
        """As RQ's, and with the jobs queued behind it when they can share its batches (``batching``)."""
        batch_size = self.runner.settings.batch_size
        with logs.job_context(job.id):
            execution = self.prepare_execution(job)
            companions = []
            if batch_size > 1 and batching.batchable(job, self.connection, self.runner.settings):
                companions = batching.take_companions(self, queue, batch_size - 1)
            if companions:
                batching.claim(self, job)
                self.runner.run_together([job, *(c for c, _ in companions)])
            self.perform_job(job, queue, execution)
            self.set_state(WorkerStatus.IDLE)
        for companion, companion_execution in companions:
            with logs.job_context(companion.id):
                self.perform_job(companion, queue, companion_execution)
                self.set_state(WorkerStatus.IDLE)


def _heartbeat(runner: JobRunner, name: str, stop: threading.Event) -> None:
    """Keep the worker's key alive; every few beats, recover the jobs of dead workers of this model."""
    k = keys(runner.settings)
    ttl = max(2, int(runner.settings.worker_heartbeat_s * 3))
    info = json.dumps({"name": name, "host": socket.gethostname(), "pid": os.getpid()})
    model_info = json.dumps(describe_model(runner))
    beats = 0
    while not stop.is_set():
        try:
            with runner.connection.pipeline(transaction=False) as pipe:
                beat(pipe, runner.settings, runner.model.id, name, info, ttl)
                pipe.set(k.model_last_beat(runner.model.id), repr(time.time()), ex=runner.settings.result_ttl)
                pipe.set(k.model_info(runner.model.id), model_info, nx=True)  # back at once after a Redis flush
                pipe.execute()
            if beats % 2 == 1:
                recover_orphans(runner.connection, runner.settings, runner.model.id)
        except redis.RedisError:
            pass  # Redis away: the heartbeat lapses and /readyz says so; the next beat restores it
        except Exception:
            log.exception("orphan recovery failed")
        beats += 1
        stop.wait(runner.settings.worker_heartbeat_s)


def describe_model(runner: JobRunner) -> dict:
    """What the API needs to know of the loaded model (token imports are checked against it)."""
    engine = runner.engine
    return {"id": runner.model.id, "fingerprint": engine.t2i.fingerprint, "classes": engine.counter.classes,
            "family": engine.t2i.family, "image_size": engine.t2i.image_size, "max_count": engine.max_count,
            "dims": {name: int(enc.get_input_embeddings().weight.shape[1]) for name, _, enc in engine.t2i.encoders()},
            "token_norm_bounds": engine.t2i.token_norm_bounds}


def publish_model_info(runner: JobRunner) -> None:
    runner.connection.set(keys(runner.settings).model_info(runner.model.id), json.dumps(describe_model(runner)))


def _clear_stale_registration(runner: JobRunner, name: str) -> None:
    """A predecessor of the same name that was killed leaves RQ's registration behind; RQ would refuse to
    start. It is stale when that name has no live heartbeat (or its process is gone from this host)."""
    beat = runner.connection.get(keys(runner.settings).worker(runner.model.id, name))
    if beat and json.loads(beat)["pid"] != os.getpid() and worker_alive(runner.connection, runner.settings,
                                                                        runner.model.id, name):
        raise RuntimeError(f"a live worker named {name!r} already serves model {runner.model.id}")
    runner.connection.delete(SimpleWorker.redis_worker_namespace_prefix + name)


def _prepare(runner: JobRunner, name: str) -> int:
    """What a worker does before serving, at start and after Redis came back."""
    _clear_stale_registration(runner, name)
    reseeded = runner.store.reseed()
    publish_model_info(runner)
    recovered = recover_orphans(runner.connection, runner.settings, runner.model.id, starting=name)
    if recovered:
        log.warning("recovered %d job(s) of dead workers: %s", len(recovered), ", ".join(recovered))
    return reseeded


def run_worker(settings: Settings, model_id: str | None = None, burst: bool = False, name: str | None = None,
               on_ready=None) -> None:
    model = settings.model(model_id)
    name = name or f"{model.id}-{socket.gethostname()}-{os.getpid()}"
    log_handler = logs.install(settings.log_format, worker=name, model=model.id)
    runner = JobRunner.load(settings, model_id)
    runner.install()
    queues = [generation_queue(runner.connection, settings, runner.model.id),
              library_queue(runner.connection, settings, runner.model.id)]
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(runner, name, stop), daemon=True)
    webhooks.Dispatcher(settings, name).start(stop)  # deliveries go on while the worker computes
    delay, ready = 1.0, False
    for sig in (signal.SIGTERM, signal.SIGINT):  # outside RQ's work loop (e.g. waiting for Redis) too
        signal.signal(sig, lambda *_: runner.shutdown.set())
    try:
        while not runner.shutdown.is_set():
            try:
                reseeded = _prepare(runner, name)
                if not beat.is_alive():
                    beat.start()
                if on_ready and not ready:
                    on_ready(runner, reseeded)
                ready, delay = True, 1.0
                worker = TallyWorker.serving(runner, queues, name=name)
                worker.work(burst=burst, with_scheduler=False, logging_level="WARNING")
                runner.connection.ping()  # work() also returns after losing Redis: tell that from an end
                if burst or runner.shutdown.is_set():
                    break
            except redis.RedisError as exc:
                # Unreachable, full, read-only or loading: wait and go on. The job in hand, if its end could
                # not be written, is still in this worker's started registry: ``_prepare`` requeues it once
                # Redis takes writes again (the job's own deadline still holds).
                log.warning("%s (%s); retrying in %.0f s", redis_trouble(exc), exc, delay)
                runner.shutdown.wait(delay)
                delay = min(delay * 2, 30.0)
    finally:
        stop.set()
        try:
            unregister(runner.connection, settings, runner.model.id, name)
        except redis.RedisError:
            pass
        logs.uninstall(log_handler)
