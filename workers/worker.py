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
from dataclasses import dataclass, field

import redis
from rq import SimpleWorker
from rq.worker import WorkerStatus

from optimization.config import ModelSpec

from . import batching, logs, webhooks
from .queue import beat, connect, generation_queue, keys, library_queue, redis_trouble, unregister
from .recovery import recover_orphans, worker_alive
from .settings import Settings
from .tokens import TokenStore


@dataclass
class WorkerRuntime:
    """What job functions need, loaded once per worker process."""

    settings: Settings
    model: ModelSpec
    connection: redis.Redis
    engine: object  # optimization.engine.CountEngine
    store: TokenStore
    shutdown: threading.Event = field(default_factory=threading.Event)  # set by SIGTERM / Ctrl-C
    batched: dict = field(default_factory=dict)  # job id -> (reporter, outcome) of jobs run in a shared batch


_runtime: WorkerRuntime | None = None  # set once by run_worker; RQ calls job functions by import path


def current_runtime() -> WorkerRuntime:
    if _runtime is None:
        raise RuntimeError("no worker runtime: job functions run inside `tally worker`")
    return _runtime


def load_runtime(settings: Settings, model_id: str | None = None) -> WorkerRuntime:
    from optimization.engine import CountEngine

    model = settings.model(model_id)
    connection = connect(settings, blocking=True)
    logs.quiet_model_loading()  # a loading bar in a log of JSON lines is a line no collector can read
    engine = CountEngine.from_spec(model, refine_config=settings.refine, noise_config=settings.noise)
    store = TokenStore.for_settings(settings, connection)
    return WorkerRuntime(settings, model, connection, engine, store)


log = logging.getLogger("tally.worker")


class TallyWorker(SimpleWorker):
    """RQ's in-process worker whose stop signal also interrupts the running job at its next check, and whose
    log records while a job runs (RQ's own included) carry the job id."""

    shutdown: threading.Event

    def request_stop(self, signum, frame):
        self.shutdown.set()
        super().request_stop(signum, frame)

    def execute_job(self, job, queue):
        """As RQ's, and with the jobs queued behind it when they can share its batches (``batching``)."""
        runtime = current_runtime()
        with logs.job_context(job.id):
            execution = self.prepare_execution(job)
            companions = []
            if runtime.settings.batch_size > 1 and batching.batchable(job):
                companions = batching.take_companions(self, queue, runtime.settings.batch_size - 1)
            if companions:
                batching.claim(self, job)
                batching.run_together(runtime, [job, *(c for c, _ in companions)])
            self.perform_job(job, queue, execution)
            self.set_state(WorkerStatus.IDLE)
        for companion, companion_execution in companions:
            with logs.job_context(companion.id):
                self.perform_job(companion, queue, companion_execution)
                self.set_state(WorkerStatus.IDLE)


def _heartbeat(runtime: WorkerRuntime, name: str, stop: threading.Event) -> None:
    """Keep the worker's key alive; every few beats, recover the jobs of dead workers of this model."""
    k = keys(runtime.settings)
    ttl = max(2, int(runtime.settings.worker_heartbeat_s * 3))
    info = json.dumps({"name": name, "host": socket.gethostname(), "pid": os.getpid()})
    model_info = json.dumps(describe_model(runtime))
    beats = 0
    while not stop.is_set():
        try:
            with runtime.connection.pipeline(transaction=False) as pipe:
                beat(pipe, runtime.settings, runtime.model.id, name, info, ttl)
                pipe.set(k.model_last_beat(runtime.model.id), repr(time.time()), ex=runtime.settings.result_ttl)
                pipe.set(k.model_info(runtime.model.id), model_info, nx=True)  # back at once after a Redis flush
                pipe.execute()
            if beats % 2 == 1:
                recover_orphans(runtime.connection, runtime.settings, runtime.model.id)
        except redis.RedisError:
            pass  # Redis away: the heartbeat lapses and /readyz says so; the next beat restores it
        except Exception:
            log.exception("orphan recovery failed")
        beats += 1
        stop.wait(runtime.settings.worker_heartbeat_s)


def describe_model(runtime: WorkerRuntime) -> dict:
    """What the API needs to know of the loaded model (token imports are checked against it)."""
    engine = runtime.engine
    return {"id": runtime.model.id, "fingerprint": engine.t2i.fingerprint, "classes": engine.counter.classes,
            "family": engine.t2i.family, "image_size": engine.t2i.image_size, "max_count": engine.max_count,
            "dims": {name: int(enc.get_input_embeddings().weight.shape[1]) for name, _, enc in engine.t2i.encoders()},
            "token_norm_bounds": engine.t2i.token_norm_bounds}


def publish_model_info(runtime: WorkerRuntime) -> None:
    runtime.connection.set(keys(runtime.settings).model_info(runtime.model.id), json.dumps(describe_model(runtime)))


def _clear_stale_registration(runtime: WorkerRuntime, name: str) -> None:
    """A predecessor of the same name that was killed leaves RQ's registration behind; RQ would refuse to
    start. It is stale when that name has no live heartbeat (or its process is gone from this host)."""
    beat = runtime.connection.get(keys(runtime.settings).worker(runtime.model.id, name))
    if beat and json.loads(beat)["pid"] != os.getpid() and worker_alive(runtime.connection, runtime.settings,
                                                                        runtime.model.id, name):
        raise RuntimeError(f"a live worker named {name!r} already serves model {runtime.model.id}")
    runtime.connection.delete(SimpleWorker.redis_worker_namespace_prefix + name)


def _prepare(runtime: WorkerRuntime, name: str) -> int:
    """What a worker does before serving, at start and after Redis came back."""
    _clear_stale_registration(runtime, name)
    reseeded = runtime.store.reseed()
    publish_model_info(runtime)
    recovered = recover_orphans(runtime.connection, runtime.settings, runtime.model.id, starting=name)
    if recovered:
        log.warning("recovered %d job(s) of dead workers: %s", len(recovered), ", ".join(recovered))
    return reseeded


def run_worker(settings: Settings, model_id: str | None = None, burst: bool = False, name: str | None = None,
               on_ready=None) -> None:
    global _runtime
    model = settings.model(model_id)
    name = name or f"{model.id}-{socket.gethostname()}-{os.getpid()}"
    log_handler = logs.install(settings.log_format, worker=name, model=model.id)
    _runtime = runtime = load_runtime(settings, model_id)
    queues = [generation_queue(runtime.connection, settings, runtime.model.id),
              library_queue(runtime.connection, settings, runtime.model.id)]
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(runtime, name, stop), daemon=True)
    webhooks.Dispatcher(settings, name).start(stop)  # deliveries go on while the worker computes
    delay, ready = 1.0, False
    for sig in (signal.SIGTERM, signal.SIGINT):  # outside RQ's work loop (e.g. waiting for Redis) too
        signal.signal(sig, lambda *_: runtime.shutdown.set())
    try:
        while not runtime.shutdown.is_set():
            try:
                reseeded = _prepare(runtime, name)
                if not beat.is_alive():
                    beat.start()
                if on_ready and not ready:
                    on_ready(runtime, reseeded)
                ready, delay = True, 1.0
                worker = TallyWorker(queues, connection=runtime.connection, name=name)
                worker.shutdown = runtime.shutdown
                worker.work(burst=burst, with_scheduler=False, logging_level="WARNING")
                runtime.connection.ping()  # work() also returns after losing Redis: tell that from an end
                if burst or runtime.shutdown.is_set():
                    break
            except redis.RedisError as exc:
                # Unreachable, full, read-only or loading: wait and go on. The job in hand, if its end could
                # not be written, is still in this worker's started registry: ``_prepare`` requeues it once
                # Redis takes writes again (the job's own deadline still holds).
                log.warning("%s (%s); retrying in %.0f s", redis_trouble(exc), exc, delay)
                runtime.shutdown.wait(delay)
                delay = min(delay * 2, 30.0)
    finally:
        stop.set()
        try:
            unregister(runtime.connection, settings, runtime.model.id, name)
        except redis.RedisError:
            pass
        logs.uninstall(log_handler)
