"""The functions RQ runs in a worker (``generate_job``, ``library_job``) and its failure callbacks.

Errors: bad input only a worker can see (``InvalidRequest``) fails the job with ``invalid_request``;
anything else is a bug: the job fails with ``internal``, the traceback goes to the worker's log, and the
worker keeps serving (``runner.JobRunner.generate``). Torch is imported inside the functions only.
"""

from __future__ import annotations

from rq.job import Job, get_current_job

from .. import library
from ..records import job_interrupted
from ..statuses import LearningStatus
from . import runner, slices
from .runner import WorkerStopping

GENERATE = "workers.runtime.tasks.generate_job"
LIBRARY = "workers.runtime.tasks.library_job"


def generate_job() -> dict:
    """A user's generation job: RQ's job carries only its id; the request is in the job's record."""
    return runner.current().generate(get_current_job())


def library_job(model_id: str, cls: str, count: int, key_id: str) -> dict:
    """One slice of learning the library token of one key, at low priority."""
    return slices.run_slice(runner.current(), model_id, cls, count, key_id)


def generation_failed(job: Job, connection, exc_type, *exc_info) -> None:
    """RQ failure callback of generation jobs (also run for jobs abandoned by a dead worker, by
    ``recovery``): a failure that the job's own handlers did not record (its worker died, RQ's job timeout)
    is written to its record: queued again while RQ retries it, else failed."""
    if exc_type is not None and issubclass(exc_type, WorkerStopping):
        return  # the job put itself back, and its record says so
    job_interrupted(connection, runner.current_settings(), job.id, retried=bool(job.retries_left))


def release_library_lock(job: Job, connection, *exc_info) -> None:
    """RQ failure callback (also run for tasks abandoned by a dead worker): the next miss may start another."""
    library.conclude(connection, runner.current_settings(), job.meta["key"], LearningStatus.failed)
