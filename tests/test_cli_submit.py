"""``tally submit``, ``jobs``, ``get`` and ``cancel`` against no server and against a real API (uvicorn in
this process, no worker): every error is one line with an exit status saying its kind, and what was asked for
reaches the queue."""

from __future__ import annotations

import json
import threading
import time
import uuid

import httpx
import pytest
import redis
from workers.records import read_record
from workers.settings import Settings

from .conftest import free_port, serve_api

PROMPT = ("--prompt", "a photo of red circles", "--count", "3")


def _one_line_error(result, *fragments, status=2):
    assert result.returncode == status, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:"), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def api_settings(redis_url, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("api")
    return Settings(redis_url=redis_url, redis_prefix=f"t{uuid.uuid4().hex[:8]}", runtime_dir=tmp / "runtime",
                    token_dir=tmp / "tokens")


@pytest.fixture(scope="module")
def api(api_settings):
    """The API on a free port, serving a private Redis prefix; no worker."""
    with serve_api(api_settings) as port:
        yield f"http://127.0.0.1:{port}"


def test_an_unreachable_api_is_one_line_naming_the_url(tally_cli):
    url = f"http://127.0.0.1:{free_port()}"
    line = _one_line_error(tally_cli("submit", "--url", url, *PROMPT), "cannot reach the Tally API", url, status=69)
    assert "internal error" not in line


def test_tally_url_from_the_environment_is_used_without_url(tally_cli):
    url = f"http://127.0.0.1:{free_port()}"
    _one_line_error(tally_cli("submit", *PROMPT, env={"TALLY_URL": url}), "cannot reach the Tally API", url,
                    status=69)


def test_detach_queues_the_request_as_given_under_the_api_key(tally_cli, api, api_settings, redis_url, tmp_path):
    result = tally_cli("submit", "--url", api, "--detach", *PROMPT, "--model", "reference", "--policy", "refine",
                       "--budget-seconds", "5", "--budget-candidates", "8", "--num-images", "2", "--seed", "11",
                       "--api-key", "k1", "--queue-if-offline", "--json", str(tmp_path / "accepted.json"))
    assert result.returncode == 0, result.stderr
    accepted = json.loads((tmp_path / "accepted.json").read_text())
    job_id = accepted["id"]
    assert result.stdout.strip() == job_id and accepted["status"] == "queued"
    assert accepted["links"]["events"] in result.stderr

    record = httpx.get(f"{api}/v1/jobs/{job_id}", headers={"X-API-Key": "k1"}, timeout=5)
    assert record.status_code == 200, record.text
    record = record.json()
    assert record["status"] == "queued" and record["policy"] == "refine" and record["model"] == "reference"
    assert record["count"] == 3 and record["object"] == "circle"
    # A key separates owners: without it (or with another one) the job does not exist.
    assert httpx.get(f"{api}/v1/jobs/{job_id}", timeout=5).status_code == 404
    assert httpx.get(f"{api}/v1/jobs/{job_id}", headers={"X-API-Key": "k2"}, timeout=5).status_code == 404

    request = read_record(redis.Redis.from_url(redis_url), api_settings, job_id).request
    assert request.budget.max_seconds == 5 and request.budget.max_candidates == 8
    assert request.num_images == 2 and request.seed == 11 and request.policy == "refine"


def test_detach_json_to_stdout_is_the_accepted_response_alone(tally_cli, api):
    result = tally_cli("submit", "--url", api, "--detach", "--queue-if-offline", *PROMPT, "--json", "-")
    assert result.returncode == 0, result.stderr
    accepted = json.loads(result.stdout)
    assert accepted["status"] == "queued" and set(accepted["links"]) == {"self", "events", "images"}


@pytest.mark.parametrize("args, fragment", [
    (("--prompt", "a photo of red circles", "--count", "0"), "count: must be between 1 and"),
    ((*PROMPT, "--queue-if-offline", "--count", "0"), "count: must be between 1 and"),
    ((*PROMPT, "--model", "nope"), "unknown model 'nope'"),
    ((*PROMPT, "--budget-candidates", "0"), "budget.max_candidates"),
])
def test_a_request_the_api_refuses_is_one_line_with_its_code(tally_cli, api, args, fragment):
    _one_line_error(tally_cli("submit", "--url", api, *args), "invalid_request: ", fragment)


def test_no_live_worker_is_one_line_that_says_how_to_queue_anyway(tally_cli, api):
    _one_line_error(tally_cli("submit", "--url", api, "--detach", *PROMPT), "no_worker: ", "--queue-if-offline",
                    status=69)


def test_a_detached_job_is_listed_read_and_canceled_from_the_cli(tally_cli, api):
    key = ("--url", api, "--api-key", f"k-{uuid.uuid4().hex[:8]}")
    submitted = tally_cli("submit", *key, "--detach", "--queue-if-offline", *PROMPT, "--num-images", "2")
    job_id = submitted.stdout.strip()
    listed = tally_cli("jobs", *key, "--json", "-")
    assert listed.returncode == 0, listed.stderr
    jobs = json.loads(listed.stdout)["jobs"]
    assert [(j["id"], j["status"], j["num_images"]) for j in jobs] == [(job_id, "queued", 2)]
    table = tally_cli("jobs", *key)
    assert job_id in table.stdout + table.stderr and "0/2" in table.stdout + table.stderr
    waiting = tally_cli("get", job_id, *key)
    assert waiting.returncode == 0 and f"job {job_id} queued, queue position" in waiting.stdout + waiting.stderr
    canceled = tally_cli("cancel", job_id, *key)
    assert canceled.returncode == 0 and f"job {job_id} canceled" in canceled.stdout + canceled.stderr
    _one_line_error(tally_cli("get", job_id, *key), f"job {job_id} ended canceled", status=3)
    _one_line_error(tally_cli("get", uuid.uuid4().hex, *key), "not_found")


def test_following_a_job_that_ends_without_images_is_one_line(tally_cli, api, api_settings, tmp_path):
    """No worker: the job stays queued until it is canceled; the event stream's final record ends the command."""
    from workers.queue import generation_queue

    queue = generation_queue(redis.Redis.from_url(api_settings.redis_url), api_settings, "reference")
    before, canceled = set(queue.get_job_ids()), []

    def cancel_the_new_job() -> None:
        deadline = time.monotonic() + 20
        while not canceled and time.monotonic() < deadline:
            for job_id in set(queue.get_job_ids()) - before:
                if httpx.delete(f"{api}/v1/jobs/{job_id}", headers={"X-API-Key": "k-follow"}, timeout=5).is_success:
                    canceled.append(job_id)
            time.sleep(0.1)

    canceller = threading.Thread(target=cancel_the_new_job, daemon=True)
    canceller.start()
    result = tally_cli("submit", "--url", api, "--api-key", "k-follow", "--queue-if-offline", *PROMPT,
                       "--json", str(tmp_path / "final.json"))
    canceller.join(timeout=25)
    assert canceled, result.stderr
    assert result.returncode == 3 and "Traceback" not in result.stderr  # the request was fine, the job was not
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: job {canceled[0]} ended canceled"], result.stderr
    final = json.loads((tmp_path / "final.json").read_text())
    assert final["id"] == canceled[0] and final["status"] == "canceled"
