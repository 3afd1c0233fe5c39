"""A job's public record: one Redis key, read in one round trip, written in the submit's one transaction,
and right in every state of the lifecycle (queued, running, succeeded, canceled, put back by a stopping
worker, recovered from a dead one, failed past its handlers). Real Redis, real RQ workers in this process."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
import redis
from rq import SimpleWorker
from rq.job import Job

from workers import records, user_jobs
from workers.queue import generation_queue, keys, library_queue
from workers.recovery import recover_orphans
from workers.requests import build_request

BODY = {"prompt": "a photo of red circles", "count": 2, "budget": {"max_candidates": 8}}


class CountingConnection(redis.Connection):
    """A Redis connection that counts what it sends: one send is one round trip."""

    sent = 0

    def send_packed_command(self, command, check_health=True):
        CountingConnection.sent += 1
        return super().send_packed_command(command, check_health)


def _round_trips(connection: redis.Redis, call) -> int:
    CountingConnection.sent = 0
    call()
    return CountingConnection.sent


@pytest.fixture
def runtime(runtime):
    runtime.settings = runtime.settings.model_copy(update={"job_retries": 2})
    return runtime


def _submit(rt, owner: str = "tester", **body) -> str:
    request = build_request(rt.settings, **{**BODY, **body})
    return user_jobs.submit(rt.connection, rt.settings, request, owner).job_id


def _work(rt, max_jobs: int | None = None) -> None:
    queues = [generation_queue(rt.connection, rt.settings, "reference"),
              library_queue(rt.connection, rt.settings, "reference")]
    SimpleWorker(queues, connection=rt.connection).work(burst=True, with_scheduler=False, max_jobs=max_jobs)


def _record(rt, job_id: str) -> dict:
    return records.job_record(rt.connection, rt.settings, job_id, "tester")


def _events(rt, job_id: str) -> list[dict]:
    return [event for _, event in records.decode_events(rt.connection.xrange(keys(rt.settings).job_events(job_id)))]


def test_a_status_read_is_one_round_trip_on_one_key(runtime):
    counting = redis.Redis.from_url(runtime.settings.redis_url, connection_class=CountingConnection)
    first, second = _submit(runtime), _submit(runtime)
    records.job_record(counting, runtime.settings, first, "tester")  # loads the script once
    assert _round_trips(counting, lambda: records.job_record(counting, runtime.settings, second, "tester")) == 1
    record = records.job_record(counting, runtime.settings, second, "tester")
    assert record["status"] == "queued" and record["queue_position"] == 1 and record["request"]["count"] == 2
    assert records.job_record(counting, runtime.settings, second, "someone else") is None
    stored = [k.decode() for k in runtime.connection.scan_iter(f"{runtime.settings.redis_prefix}:job:{second}:*")]
    assert sorted(stored) == [keys(runtime.settings).job_events(second), keys(runtime.settings).job_record(second)]


def test_a_submit_is_one_round_trip_and_no_job_is_ever_queued_without_its_record(runtime):
    counting = redis.Redis.from_url(runtime.settings.redis_url, connection_class=CountingConnection)
    request = build_request(runtime.settings, **BODY)
    user_jobs.submit(counting, runtime.settings, request, "tester")  # asks the server's version once
    assert _round_trips(counting, lambda: user_jobs.submit(counting, runtime.settings, request, "tester")) == 1

    queue = generation_queue(runtime.connection, runtime.settings, "reference")
    done, seen, orphans = threading.Event(), set(), []

    def watch() -> None:  # reads the queue while submits land: every id it sees must have its record
        reader = redis.Redis.from_url(runtime.settings.redis_url)
        while not done.is_set():
            for job_id in queue.get_job_ids():
                if job_id not in seen:
                    seen.add(job_id)
                    if not reader.exists(keys(runtime.settings).job_record(job_id)):
                        orphans.append(job_id)

    watcher = threading.Thread(target=watch)
    watcher.start()
    submitters = [threading.Thread(target=lambda: [_submit(runtime) for _ in range(40)]) for _ in range(3)]
    for t in submitters:
        t.start()
    for t in submitters:
        t.join()
    done.set()
    watcher.join()
    assert len(queue) == 122 and len(seen) > 40 and orphans == []


def test_a_jobs_record_follows_it_from_queued_to_succeeded(runtime, api):
    job = _submit(runtime)
    _work(runtime)
    record = _record(runtime, job)
    assert record["status"] == "succeeded" and record["queue_position"] is None and record["stage"] is None
    assert record["results"] and record["cost"]["candidates"] > 0 and record["token"]["key"].startswith("circle-2")
    assert record["timings"]["submitted"] <= record["timings"]["started"] <= record["timings"]["finished"]
    assert [e["status"] for e in _events(runtime, job)][:2] == ["queued", "running"]
    assert _events(runtime, job)[-1]["status"] == "succeeded"
    assert runtime.connection.ttl(keys(runtime.settings).job_record(job)) > 0


def test_a_canceled_queued_job_reads_canceled_and_never_runs(runtime):
    first, second = _submit(runtime), _submit(runtime)
    canceled = user_jobs.cancel(runtime.connection, runtime.settings, first, "tester")
    assert canceled["status"] == "canceled" and canceled["queue_position"] is None
    assert _record(runtime, second)["queue_position"] == 0  # it moved up
    assert runtime.connection.hgetall(keys(runtime.settings).queue_owner_counts("reference")) == {b"tester": b"1"}
    _work(runtime)
    assert _record(runtime, first)["status"] == "canceled" and _record(runtime, first)["timings"].get("started") is None
    assert _record(runtime, second)["status"] == "succeeded"


def test_a_canceled_running_job_stops_and_reads_canceled(runtime):
    job = _submit(runtime, budget={"max_candidates": 512, "max_seconds": 60}, num_images=8, count=12)  # long

    def cancel_once_running() -> None:
        deadline = time.monotonic() + 120
        while _record(runtime, job)["status"] != "running" and time.monotonic() < deadline:
            time.sleep(0.02)
        user_jobs.cancel(runtime.connection, runtime.settings, job, "tester")

    canceler = threading.Thread(target=cancel_once_running)
    canceler.start()
    _work(runtime)
    canceler.join()
    record = _record(runtime, job)
    assert record["status"] == "canceled" and record["progress"]["candidates"] < 512
    assert any(e.get("cancel_requested") for e in _events(runtime, job)) and _events(runtime, job)[-1]["status"] == "canceled"


def test_a_job_put_back_by_a_stopping_worker_reads_queued_at_the_front(runtime):
    job, behind = _submit(runtime), _submit(runtime)
    runtime.shutdown.set()  # as SIGTERM does: the running job stops at its first check and goes back
    _work(runtime, max_jobs=1)
    record = _record(runtime, job)
    assert record["status"] == "queued" and record["queue_position"] == 0 and record["stage"] is None
    assert _events(runtime, job)[-1] == {**_events(runtime, job)[-1], "status": "queued", "requeued": True}
    runtime.shutdown.clear()
    _work(runtime)
    assert _record(runtime, job)["status"] == "succeeded" and _record(runtime, behind)["status"] == "succeeded"


def _start_on_a_worker_that_dies(rt, job_id: str) -> str:
    """What a worker does when it takes the job (RQ's started registry, the record says running); then it
    is never heard of again."""
    queue = generation_queue(rt.connection, rt.settings, "reference")
    dead = SimpleWorker([queue], connection=rt.connection, name=f"dead-{uuid.uuid4().hex[:6]}")
    job = Job.fetch(job_id, connection=rt.connection)
    queue.remove(job_id)
    dead.prepare_execution(job)
    dead.prepare_job_execution(job)
    record = records.read_record(rt.connection, rt.settings, job_id)
    record.change(status="running", stage="sampling")
    records.save_record(rt.connection, rt.settings, record)
    records.push_event(rt.connection, rt.settings, job_id, {"status": "running", "stage": "sampling"})
    return dead.name


@pytest.mark.parametrize("retries, status", [(2, "queued"), (0, "failed")])
def test_a_dead_workers_job_reads_queued_again_or_failed_when_no_retry_is_left(runtime, retries, status):
    runtime.settings = runtime.settings.model_copy(update={"job_retries": retries})
    job = _submit(runtime)
    dead = _start_on_a_worker_that_dies(runtime, job)
    assert _record(runtime, job)["status"] == "running"
    assert recover_orphans(runtime.connection, runtime.settings, "reference", starting=dead) == [job]
    record = _record(runtime, job)
    assert record["status"] == status and _events(runtime, job)[-1]["status"] == status
    if status == "queued":
        assert record["queue_position"] == 0 and record["error"] is None
    else:
        assert record["error"]["code"] == "internal"
        assert job not in {m.decode() for m in runtime.connection.smembers(keys(runtime.settings).owner_active("tester"))}
    assert len(_events(runtime, job)) == 3  # queued, running, then one event for the recovery


def test_a_job_that_fails_past_its_handlers_reads_failed(runtime, monkeypatch):
    from workers.runtime.runner import JobRunner

    runtime.settings = runtime.settings.model_copy(update={"job_retries": 0})
    job = _submit(runtime)
    rq_job = Job.fetch(job, connection=runtime.connection)
    assert rq_job.args == () and rq_job.kwargs == {}  # RQ carries only the id: the request is the record's
    assert records.read_record(runtime.connection, runtime.settings, job).request.count == 2

    def fails_to_start(self, job):
        raise RuntimeError("a bug before the job's own handlers")

    monkeypatch.setattr(JobRunner, "_start", fails_to_start)
    _work(runtime)
    record = _record(runtime, job)
    assert record["status"] == "failed" and record["error"]["code"] == "internal"
    assert _events(runtime, job)[-1]["status"] == "failed"
