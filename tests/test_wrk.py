"""The service benchmark's load generator: wrk with its Lua scripts against a real API (uvicorn in a thread),
keys required as deployed, for a second per run."""

from __future__ import annotations

import json

import pytest
import redis

from tally.benchmarks import wrk
from workers.auth import KeyStore
from workers.queue import generation_queue

from .conftest import serve_api

BODY = {"prompt": "a photo of red circles", "object": "circle", "count": 3, "queue_if_offline": True}


@pytest.fixture
def served(settings):
    settings = settings.model_copy(update={"auth": "required"})
    secret, _ = KeyStore(redis.Redis.from_url(settings.redis_url), settings).create(
        "load", "admin", rate_limit="1000000/second", max_active_jobs=10**9)
    with serve_api(settings) as port:
        yield settings, f"http://127.0.0.1:{port}", secret


def test_wrk_submits_jobs_with_distinct_seeds_and_reads_them_round_robin(served, tmp_path):
    settings, url, secret = served
    submitted = wrk.run(url, wrk.submit_script(BODY), [secret, "5000"], tmp_path, connections=4, seconds=1)
    assert submitted.requests > 0 and submitted.errors == 0 and submitted.p50_ms <= submitted.p99_ms
    connection = redis.Redis.from_url(settings.redis_url)
    ids = generation_queue(connection, settings, "reference").get_job_ids()
    assert len(ids) >= submitted.requests  # wrk counts the responses it read before its time was up
    seeds = {json.loads(connection.hget(f"{settings.redis_prefix}:job:{i}:record", "record"))["request"]["seed"]
             for i in ids[:50]}
    assert len(seeds) == min(50, len(ids)) and min(seeds) > 5000

    (tmp_path / "ids").write_text("\n".join(ids[:10]) + "\n")
    read = wrk.run(url, wrk.status_script(), [secret, str(tmp_path / "ids")], tmp_path, connections=4, seconds=1)
    assert read.requests > 0 and read.errors == 0 and read.rps > 0


def test_wrk_counts_refused_requests_as_errors(served, tmp_path):
    _, url, _ = served
    (tmp_path / "ids").write_text("0" * 32 + "\n")
    refused = wrk.run(url, wrk.status_script(), ["not-a-key", str(tmp_path / "ids")], tmp_path, connections=2,
                      seconds=1)
    assert refused.requests > 0 and refused.errors == refused.requests
