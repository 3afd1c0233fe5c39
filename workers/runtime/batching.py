"""Cross-job batching: a worker that takes a job also takes the jobs queued right behind it (same model,
up to ``batch_size``) and runs their sampling in shared pipeline batches (``CountEngine.generate_many``).

Each taken job is first registered as started by this worker (RQ's started registry, so a worker that dies
now has its jobs recovered like any other), then all run together (``JobRunner.run_together``), each with its own seeds,
budget, cancellation and progress; RQ then completes them one by one, ``generate_job`` finding its outcome ready.
Jobs whose policy optimizes run alone (``Policy.batches``).
"""

from __future__ import annotations

from rq.job import Job
from rq.queue import Queue

from optimization.config import Policy

from ..records import read_record
from .tasks import GENERATE


def batchable(job: Job, connection, settings) -> bool:
    """A generation job whose policy shares batches (its record says which)."""
    if job.func_name != GENERATE:
        return False
    try:
        return Policy(read_record(connection, settings, job.id).request.policy).batches
    except Exception:  # noqa: BLE001 - not ours to judge here: it runs alone and fails there
        return False


def take_companions(worker, queue: Queue, limit: int) -> list[tuple[Job, object]]:
    """Up to ``limit`` batchable jobs from the front of ``queue``, each registered as started by ``worker``;
    returns (job, RQ execution) pairs. The first job that cannot share a batch stays at the front."""
    taken = []
    while len(taken) < limit:
        job_id = worker.connection.lindex(queue.key, 0)
        if job_id is None:
            break
        try:
            job = Job.fetch(job_id.decode(), connection=worker.connection)
        except Exception:  # noqa: BLE001 - gone or unreadable: RQ's own dequeue deals with it
            break
        if (not batchable(job, worker.connection, worker.runner.settings)
                or worker.connection.lrem(queue.key, 1, job.id) != 1):
            break  # not ours to batch, or another worker took it first
        claim(worker, job)
        taken.append((job, worker.prepare_execution(job)))
    return taken


def claim(worker, job: Job) -> None:
    """Mark the job started by ``worker`` (RQ does so only when it performs it): recovery must see whose it is."""
    with worker.connection.pipeline() as pipe:
        job.prepare_for_execution(worker.name, pipe)
        pipe.execute()
