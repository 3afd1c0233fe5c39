"""``tally worker``: one process per GPU, models loaded once and kept resident, RQ without forking.

CUDA is not fork-safe and loading a pipeline costs seconds, so the worker is an RQ ``SimpleWorker`` that
runs jobs in its own process. It listens to its model's user queue before the library queue (user jobs
first), publishes the model's fingerprint and classes for the API, keeps a heartbeat key alive for
``/readyz`` and ``/v1/models``, and re-seeds Redis from the durable token directory at start.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from dataclasses import dataclass

import redis
from rq import SimpleWorker

from optimization.config import ModelSpec

from .queue import connect, generation_queue, keys, library_queue
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


_runtime: WorkerRuntime | None = None  # set once by run_worker; RQ calls job functions by import path


def current_runtime() -> WorkerRuntime:
    if _runtime is None:
        raise RuntimeError("no worker runtime: job functions run inside `tally worker`")
    return _runtime


def load_runtime(settings: Settings, model_id: str | None = None) -> WorkerRuntime:
    from optimization.engine import CountEngine

    model = settings.model(model_id)
    connection = connect(settings, blocking=True)
    engine = CountEngine.from_spec(model, refine_config=settings.refine)
    store = TokenStore(connection, settings.tokens_path, keys(settings))
    return WorkerRuntime(settings, model, connection, engine, store)


def _heartbeat(runtime: WorkerRuntime, name: str, stop: threading.Event) -> None:
    k = keys(runtime.settings)
    ttl = max(2, int(runtime.settings.worker_heartbeat_s * 3))
    info = json.dumps({"name": name, "host": socket.gethostname(), "pid": os.getpid()})
    while not stop.is_set():
        try:
            runtime.connection.set(k.worker(runtime.model.id, name), info, ex=ttl)
        except redis.RedisError:
            pass  # Redis away: the heartbeat lapses and /readyz says so; the next beat restores it
        stop.wait(runtime.settings.worker_heartbeat_s)


def publish_model_info(runtime: WorkerRuntime) -> None:
    engine = runtime.engine
    info = {"id": runtime.model.id, "fingerprint": engine.t2i.fingerprint, "classes": engine.counter.classes,
            "family": engine.t2i.family, "image_size": engine.t2i.image_size, "max_count": engine.max_count}
    runtime.connection.set(keys(runtime.settings).model_info(runtime.model.id), json.dumps(info))


def run_worker(settings: Settings, model_id: str | None = None, burst: bool = False, name: str | None = None,
               on_ready=None) -> None:
    global _runtime
    _runtime = runtime = load_runtime(settings, model_id)
    reseeded = runtime.store.reseed()
    publish_model_info(runtime)
    name = name or f"{socket.gethostname()}-{os.getpid()}"
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(runtime, name, stop), daemon=True)
    beat.start()
    if on_ready:
        on_ready(runtime, reseeded)
    queues = [generation_queue(runtime.connection, settings, runtime.model.id),
              library_queue(runtime.connection, settings, runtime.model.id)]
    worker = SimpleWorker(queues, connection=runtime.connection, name=name)
    try:
        worker.work(burst=burst, with_scheduler=False, logging_level="WARNING")
    finally:
        stop.set()
        runtime.connection.delete(keys(settings).worker(runtime.model.id, name))
