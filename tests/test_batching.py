"""Cross-job batching: the engine shares pipeline batches between requests, and a worker takes the jobs
queued behind its job into one batch; each keeps its own seeds, budget, outcome and record."""

from __future__ import annotations


import pytest

from optimization.config import Budget
from optimization.engine import CountEngine
from optimization.job import CANDIDATE_BATCH, GenerationRequest
from optimization.errors import InvalidRequest
from workers import records, user_jobs
from workers.queue import generation_queue
from workers.requests import build_request
from workers.runtime.process import TallyWorker

from .test_worker import _submit

REQUESTS = [GenerationRequest("a photo of red circles", 3, seed=11, budget=Budget(max_candidates=16), policy="resample"),
            GenerationRequest("a photo of blue squares", 5, seed=12, budget=Budget(max_candidates=16), policy="resample"),
            GenerationRequest("a photo of green crosses", 2, seed=13, num_images=2, budget=Budget(max_candidates=8),
                              policy="resample")]


@pytest.fixture(scope="module")
def engine(t2i, counter, reference_spec):
    return CountEngine(t2i, counter, reference_spec)


def _summary(result) -> list[tuple]:
    return [(r.seed, r.verification.detected_count, r.verified) for r in result.images]


def test_requests_batched_together_get_what_each_gets_alone(engine):
    alone = [engine.generate_many([r])[0] for r in REQUESTS]
    together = engine.generate_many(REQUESTS + [GenerationRequest("a photo of circles", 99, seed=1)])
    assert isinstance(together[-1], InvalidRequest) and "count must be between" in str(together[-1])
    for a, t, request in zip(alone, together, REQUESTS):
        assert _summary(t) == _summary(a)  # same seeds, same counts, same verdicts
        assert t.cost["candidates"] <= request.budget.max_candidates and t.prompt == a.prompt
        assert len(t.images) == request.num_images


def test_a_canceled_request_ends_alone_and_the_others_finish(engine):
    from optimization.optimizer import Canceled

    calls = {"n": 0}

    def second_batch_stops() -> bool:
        calls["n"] += 1
        return calls["n"] > 1

    # More images than one batch holds: whatever verifies, it needs a second batch, where it is canceled.
    stopping = GenerationRequest("a photo of red circles", 7, seed=5, num_images=CANDIDATE_BATCH + 1,
                                 budget=Budget(max_candidates=64), policy="resample", should_stop=second_batch_stops)
    outcomes = engine.generate_many([stopping, REQUESTS[0]])
    assert isinstance(outcomes[0], Canceled) and _summary(outcomes[1]) == _summary(engine.generate_many([REQUESTS[0]])[0])


def test_a_worker_runs_queued_jobs_in_one_batch_and_completes_each(runtime):
    jobs = [_submit(runtime, prompt="a photo of red circles", count=3, seed=s, policy="resample",
                    budget={"max_candidates": 8}) for s in range(4)]
    # An object only the worker can refuse (a model whose classes the API does not know): that job fails alone.
    unknown = runtime.settings.model_copy(update={"models": [runtime.model.model_copy(update={"classes": None})]})
    bad = user_jobs.submit(runtime.connection, runtime.settings, build_request(
        unknown, prompt="a photo of red hexagons", count=2, policy="resample"), "tester").job_id
    refine = _submit(runtime, prompt="a photo of red circles", count=3, seed=4, policy="refine",
                     budget={"max_candidates": 8, "max_iterations": 1})
    # The user queue only: the refine job's miss schedules library learning, which is not under test here.
    queue = generation_queue(runtime.connection, runtime.settings, "reference")
    TallyWorker.serving(runtime, [queue]).work(burst=True, with_scheduler=False)

    got = {j: records.job_record(runtime.connection, runtime.settings, j, "tester") for j in [*jobs, bad, refine]}
    for j in jobs:
        assert got[j]["status"] == "succeeded" and len(got[j]["results"]) == 1, got[j]
    first_finished = min(got[j]["timings"]["finished"] for j in jobs)
    assert all(got[j]["timings"]["started"] < first_finished for j in jobs)  # all ran at once
    assert got[bad]["status"] == "failed" and got[bad]["error"]["code"] == "invalid_request"  # alone
    assert got[refine]["status"] == "succeeded" and got[refine]["timings"]["started"] >= first_finished
    # The batch gave each job the images it gets alone.
    for j, seed in zip(jobs, range(4)):
        alone = runtime.engine.generate("a photo of red circles", 3, seed=seed, policy="resample",
                                        budget=Budget(max_candidates=8))
        assert [(r["seed"], r["detected_count"]) for r in got[j]["results"]] == \
            [(r.seed, r.verification.detected_count) for r in alone.images]


def test_a_queued_job_whose_record_was_evicted_fails_alone_and_the_jobs_around_it_run(runtime):
    """The request lives only in the record: a Redis that evicts that one key loses the job, not its batch."""
    from rq.job import Job

    from workers.queue import keys

    jobs = [_submit(runtime, prompt="a photo of red circles", count=3, seed=s, policy="resample",
                    budget={"max_candidates": 8}) for s in range(3)]
    runtime.connection.delete(keys(runtime.settings).job_record(jobs[1]))
    queue = generation_queue(runtime.connection, runtime.settings, "reference")
    TallyWorker.serving(runtime, [queue]).work(burst=True, with_scheduler=False)

    for j in (jobs[0], jobs[2]):
        record = records.job_record(runtime.connection, runtime.settings, j, "tester")
        assert record["status"] == "succeeded" and len(record["results"]) == 1, record
    assert Job.fetch(jobs[1], connection=runtime.connection).get_status() == "failed"
    assert records.job_record(runtime.connection, runtime.settings, jobs[1], "tester") is None
