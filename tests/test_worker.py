"""The worker's job functions run in this process by a real RQ worker (burst mode) on a private Redis."""

from __future__ import annotations

import logging
import uuid

import pytest
import redis
from rq import SimpleWorker

from optimization.engine import CountEngine
from workers import records, worker
from workers.queue import generation_queue, library_queue
from workers.requests import build_request
from workers.settings import Settings
from workers.tokens import TokenStore


@pytest.fixture
def runtime(redis_url, tmp_path, t2i, counter, reference_spec, monkeypatch):
    from optimization.counter import load_crosscheck

    settings = Settings(redis_url=redis_url, redis_prefix=f"w{uuid.uuid4().hex[:8]}", runtime_dir=tmp_path,
                        token_dir=tmp_path / "tokens")
    connection = redis.Redis.from_url(redis_url)
    engine = CountEngine(t2i, counter, reference_spec, load_crosscheck(reference_spec.crosscheck), settings.refine)
    rt = worker.WorkerRuntime(settings, reference_spec, connection, engine, TokenStore.for_settings(settings, connection))
    monkeypatch.setattr(worker, "_runtime", rt)
    return rt


def _submit(rt, **body) -> str:
    request = build_request(rt.settings, **body)
    return records.submit(rt.connection, rt.settings, request, owner="tester").job_id


def _work(rt) -> None:
    queues = [generation_queue(rt.connection, rt.settings, "reference"),
              library_queue(rt.connection, rt.settings, "reference")]
    SimpleWorker(queues, connection=rt.connection).work(burst=True, with_scheduler=False)


def test_a_bug_in_the_engine_fails_the_job_as_internal_and_the_worker_serves_the_next(runtime, monkeypatch, caplog):
    real = CountEngine.generate
    calls = []

    def broken_once(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("an unexpected bug deep in the engine")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(CountEngine, "generate", broken_once)
    first = _submit(runtime, prompt="a photo of red circles", count=2, seed=1, budget={"max_candidates": 8})
    second = _submit(runtime, prompt="a photo of red circles", count=2, seed=2, budget={"max_candidates": 8})
    with caplog.at_level(logging.ERROR, logger="tally.worker"):
        _work(runtime)
    failed = records.job_record(runtime.connection, runtime.settings, first, "tester")
    assert failed["status"] == "failed" and failed["error"]["code"] == "internal"
    assert "RuntimeError" not in failed["error"]["message"]  # callers see a code, operators the traceback
    logged = [r for r in caplog.records if r.exc_info]
    assert logged and "an unexpected bug deep in the engine" in str(logged[0].exc_info[1])
    succeeded = records.job_record(runtime.connection, runtime.settings, second, "tester")
    assert succeeded["status"] == "succeeded" and len(succeeded["results"]) == 1


def test_bad_input_only_the_worker_can_see_fails_the_job_as_invalid_request(runtime):
    # A model whose classes are not configured leaves the object to the worker.
    settings = runtime.settings.model_copy(update={"models": [runtime.model.model_copy(update={"classes": None})]})
    job = records.submit(runtime.connection, runtime.settings,
                         build_request(settings, prompt="a photo of red hexagons", count=2), "tester").job_id
    _work(runtime)
    record = records.job_record(runtime.connection, runtime.settings, job, "tester")
    assert record["status"] == "failed" and record["error"]["code"] == "invalid_request"
    assert "no known object" in record["error"]["message"]
