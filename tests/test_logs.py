"""Worker logs: JSON lines stamped with the worker, its model and the running job's id, RQ's own lines
included; a real RQ worker (``TallyWorker``) runs the jobs in this process on a private Redis."""

from __future__ import annotations

import io
import json
import logging
import re

import pytest

from workers import logs, user_jobs
from workers.queue import generation_queue
from workers.requests import build_request
from workers.runtime.process import TallyWorker
from workers.settings import Settings


@pytest.fixture
def log_lines():
    """What the worker's log handler writes, as it would to stderr; RQ's job lines shown (INFO)."""
    stream, rq_log = io.StringIO(), logging.getLogger("rq.worker")
    handler, rq_level = logs.install("json", stream=stream, worker="w-logs", model="reference"), rq_log.level
    yield lambda: stream.getvalue().splitlines()
    logs.uninstall(handler)
    rq_log.setLevel(rq_level)


def test_every_line_a_worker_logs_during_a_job_is_json_and_carries_the_job_id(runtime, log_lines):
    submitted = [user_jobs.submit(runtime.connection, runtime.settings, build_request(
        runtime.settings, prompt="a photo of green triangles", count=4, seed=seed, policy="resample",
        budget={"max_candidates": 2}), owner="tester").job_id for seed in (1, 2)]
    worker = TallyWorker.serving(runtime, [generation_queue(runtime.connection, runtime.settings, "reference")],
                                 name="w-logs")
    worker.work(burst=True, with_scheduler=False, logging_level="INFO")

    lines = [json.loads(line) for line in log_lines()]  # every line is one JSON object
    assert lines and all(line["worker"] == "w-logs" and line["model"] == "reference" and line["level"] and
                         line["logger"] and line["time"] for line in lines)
    assert {line["job_id"] for line in lines if "job_id" in line} == set(submitted)
    announced = re.compile(r"workers\.runtime\.tasks\.\w+\(.*\) \(\w+\)$")  # RQ's word that it dequeued a job, just before it
    stamped = [n for n, line in enumerate(lines) if "job_id" in line]
    assert all("job_id" in line or announced.search(line["message"])  # nothing unstamped while jobs ran
               for line in lines[stamped[0]:stamped[-1] + 1])
    for job_id in submitted:
        about = [line for line in lines if job_id in line["message"] and not announced.search(line["message"])]
        assert {line.get("job_id") for line in about} == {job_id}  # a line about a job carries that job's id
        assert any(line["logger"] == "rq.worker" and "Job OK" in line["message"] for line in about)  # RQ's own
        [finished] = [line for line in about if line["logger"] == "tally.worker"]  # Tally's, one per finished job
        assert finished["status"] == "succeeded" and finished["seconds"]["total"] > 0
    assert not any("job_id" in line for line in lines if "done, quitting" in line["message"])  # after the jobs


def test_text_lines_name_the_worker_and_the_job():
    stream = io.StringIO()
    handler = logs.install("text", stream=stream, worker="w-text", model="reference")
    try:
        logging.getLogger("tally.worker").info("outside any job")
        with logs.job_context("job-123"):
            logging.getLogger("tally.worker").info("inside it")
            logging.getLogger("tally.worker").info("about another job", extra={"job_id": "job-456"})
    finally:
        logs.uninstall(handler)
    outside, inside, other = stream.getvalue().splitlines()
    assert "tally.worker [w-text] outside any job" in outside and "job-123" not in outside
    assert "tally.worker [w-text job-123] inside it" in inside
    assert "tally.worker [w-text job-456] about another job" in other  # a record naming its job keeps it


def test_log_format_is_json_unless_TALLY_LOG_FORMAT_says_text(monkeypatch):
    from pydantic import ValidationError

    assert Settings().log_format == "json"
    monkeypatch.setenv("TALLY_LOG_FORMAT", "text")
    assert Settings().log_format == "text"
    monkeypatch.setenv("TALLY_LOG_FORMAT", "xml")
    with pytest.raises(ValidationError):
        Settings()
