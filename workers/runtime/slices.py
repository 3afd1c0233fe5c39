"""One slice of a library task, in a worker (``workers.library`` schedules, lists and cancels tasks)."""

from __future__ import annotations

import json
import logging
import time

from ..library import conclude, enqueue_slice, update_task
from ..queue import generation_queue, keys
from ..statuses import LearningStatus

log = logging.getLogger("tally.worker")


def run_slice(runner, model_id: str, cls: str, count: int, key_id: str) -> dict:
    """One slice of a library task, in a worker: resume, learn, then queue the next slice or conclude."""
    from optimization.library import LibrarySlice, library_slice
    from optimization.optimizer import Canceled

    connection, settings, k = runner.connection, runner.settings, keys(runner.settings)
    canceled = lambda: bool(connection.exists(k.library_cancel(key_id)))  # noqa: E731
    if canceled():
        return conclude(connection, settings, key_id, LearningStatus.canceled)
    state = connection.get(k.library_state(key_id))
    users = generation_queue(connection, settings, model_id)
    update_task(connection, settings, key_id, status=LearningStatus.running)
    began = time.monotonic()
    try:
        part = library_slice(
            runner.engine, cls, count, settings.library, resume=LibrarySlice.load_state(state) if state else None,
            slice_seconds=settings.library_slice_seconds,
            should_stop=lambda: runner.shutdown.is_set() or canceled(),
            should_yield=lambda: len(users) > 0)  # a user job waits: the slice ends at its next step
    except Canceled:
        if canceled():
            return conclude(connection, settings, key_id, LearningStatus.canceled)
        enqueue_slice(connection, settings, model_id, cls, count, key_id, at_front=True)  # the worker is stopping
        update_task(connection, settings, key_id, status=LearningStatus.queued)
        return {"key": key_id, "status": "requeued"}
    validation = part.token.metadata["validation"]
    log.info("library %s: a %s slice took %.1f s", key_id, part.token.metadata["stage"], time.monotonic() - began,
             extra={"key": key_id, "stage": part.token.metadata["stage"],
                    "seconds": round(time.monotonic() - began, 2)})
    connection.hincrby(k.learning(key_id), "slices", 1)
    update_task(connection, settings, key_id, iterations=part.token.metadata["iterations"],
                validation=json.dumps(validation))
    if not part.done:
        with connection.pipeline() as pipe:
            pipe.set(k.library_state(key_id), part.state_bytes(), ex=settings.library_timeout)
            pipe.expire(k.library_lock(key_id), settings.library_timeout)
            pipe.execute()
        enqueue_slice(connection, settings, model_id, cls, count, key_id)
        update_task(connection, settings, key_id, status=LearningStatus.queued)
        return {"key": key_id, "status": "continues", "iterations": part.token.metadata["iterations"]}
    if runner.store.admit(part.token, settings.library.min_gain, settings.library.max_gain_p,
                          settings.library_retry_after_s):
        return conclude(connection, settings, key_id, LearningStatus.stored, gain=part.token.metadata["gain"])
    return conclude(connection, settings, key_id, LearningStatus.no_gain, gain=part.token.metadata["gain"])
