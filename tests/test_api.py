"""The API in this process (FastAPI's TestClient) against a private Redis: validation, errors, the token
library shared with the CLI. No worker is needed for any of this."""

from __future__ import annotations

import subprocess
import time

import pytest
import redis
from fastapi.testclient import TestClient

from service.app import create_app
from workers.records import read_record
from workers.settings import Settings

from .conftest import free_port






@pytest.mark.parametrize("body, fragment", [
    ({"count": 0}, "count: must be between 1 and 12, got 0"),
    ({"count": -1}, "count: must be between 1 and 12, got -1"),
    ({"count": 13}, "count: must be between 1 and 12, got 13"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": "   "}, "prompt: must not be blank"),
    ({"prompt": "circles " * 1250}, "at most 500 are allowed"),
    ({"prompt": "a photo of apples"}, "no known object"),
    ({"object": "hexagon"}, "unknown object 'hexagon'; known objects: circle, cross, square, triangle"),
    ({"model": "sdxl"}, "unknown model 'sdxl'; configured: reference"),
    ({"num_images": 0}, "num_images: must be between 1 and 8, got 0"),
    ({"num_images": 100}, "num_images: must be between 1 and 8, got 100"),
    ({"policy": "magic"}, "policy"),
    ({"budget": {"max_seconds": 0}}, "budget.max_seconds"),
    ({"budget": {"max_candidates": 5000}}, "budget.max_candidates: at most 1024 is allowed, got 5000"),
])
def test_bad_requests_get_422_saying_what_is_allowed(api, body, fragment):
    response = api.post("/v1/jobs", json={"prompt": "a photo of red circles", "count": 3, **body})
    assert response.status_code == 422
    assert response.json()["code"] == "invalid_request" and fragment in response.json()["message"]


def test_a_body_that_is_not_json_says_so(api):
    response = api.post("/v1/jobs", content=b'{"prompt": "a photo of red circles", count: 3}',
                        headers={"Content-Type": "application/json"})
    assert response.status_code == 422
    assert response.json()["message"].startswith("the body is not valid JSON: ")


def test_the_openapi_document_states_the_deployments_budget_defaults(api, settings):
    budget = api.get("/openapi.json").json()["components"]["schemas"]["BudgetIn"]["properties"]
    for name in ("max_seconds", "max_candidates", "max_iterations"):
        assert budget[name]["default"] == getattr(settings.default_budget, name)


def test_the_openapi_document_declares_how_to_send_a_key(api):
    document = api.get("/openapi.json").json()
    assert document["components"]["securitySchemes"] == {
        "bearer": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer <key>"},
        "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key", "description": "X-API-Key: <key>"}}
    for path, operations in document["paths"].items():
        for operation in operations.values():
            public = path in ("/healthz", "/readyz", "/metrics") or not path.startswith("/v1")
            assert (operation.get("security") is None) == public, path


@pytest.mark.parametrize("webhook, fragment", [
    ("ftp://example.com/x", "must be an http:// or https:// URL"),
    ("http://user:pw@93.184.216.34/x", "must not hold credentials"),
    ("http://10.1.2.3/hook", "private"),
    ("http://[::1]:8080/hook", "loopback"),
])
def test_webhooks_to_private_addresses_or_other_schemes_are_refused(api, webhook, fragment):
    response = api.post("/v1/jobs", json={"prompt": "a photo of red circles", "count": 2, "webhook": webhook,
                                          "queue_if_offline": True})
    assert response.status_code == 422 and fragment in response.json()["message"]
    public = api.post("/v1/jobs", json={"prompt": "a photo of red circles", "count": 2, "queue_if_offline": True,
                                        "webhook": "https://93.184.216.34/hook"})
    assert public.status_code == 202


def test_a_valid_request_is_queued_with_its_object_resolved_from_configuration(api, settings):
    from workers.queue import generation_queue

    response = api.post("/v1/jobs", json={"prompt": "a photo of red circles", "count": 3, "seed": 5,
                                          "queue_if_offline": True})
    assert response.status_code == 202
    job_id = response.json()["id"]
    assert response.headers["Location"] == f"/v1/jobs/{job_id}" == response.json()["links"]["self"]
    record = api.get(f"/v1/jobs/{job_id}").json()
    assert record["status"] == "queued" and record["object"] == "circle" and record["policy"] == "resample"
    assert record["queue_position"] == 0 and record["estimated_start"] is None  # no worker, nothing measured
    queue = generation_queue(redis.Redis.from_url(settings.redis_url), settings, "reference")
    assert queue.get_job_ids() == [job_id]
    stored = read_record(redis.Redis.from_url(settings.redis_url), settings, job_id)
    assert stored.request.budget == settings.default_budget


def test_a_job_for_a_model_without_a_live_worker_is_refused_not_left_waiting(api, settings):
    from workers.queue import generation_queue

    response = api.post("/v1/jobs", json={"prompt": "a photo of red circles", "count": 3})
    assert response.status_code == 503 and response.json()["code"] == "no_worker"
    assert "queue_if_offline" in response.json()["message"] and int(response.headers["Retry-After"]) > 0
    assert len(generation_queue(redis.Redis.from_url(settings.redis_url), settings, "reference")) == 0


def test_the_callers_jobs_are_listed_newest_first_page_by_page(api):
    def submit(seed, key="owner-a"):
        return api.post("/v1/jobs", headers={"X-API-Key": key}, json={
            "prompt": "a photo of red circles", "count": 3, "seed": seed, "queue_if_offline": True}).json()["id"]

    mine = [submit(s) for s in range(5)]
    other = submit(99, key="owner-b")
    api.delete(f"/v1/jobs/{mine[1]}", headers={"X-API-Key": "owner-a"})
    first = api.get("/v1/jobs", params={"limit": 2}, headers={"X-API-Key": "owner-a"}).json()
    assert [j["id"] for j in first["jobs"]] == mine[::-1][:2] and first["next_cursor"]
    second = api.get("/v1/jobs", params={"limit": 2, "cursor": first["next_cursor"]},
                     headers={"X-API-Key": "owner-a"}).json()
    rest = api.get("/v1/jobs", params={"limit": 2, "cursor": second["next_cursor"]}, headers={"X-API-Key": "owner-a"}).json()
    assert [j["id"] for j in second["jobs"] + rest["jobs"]] == mine[::-1][2:] and rest["next_cursor"] is None
    canceled = api.get("/v1/jobs", params={"status": "canceled"}, headers={"X-API-Key": "owner-a"}).json()
    assert [j["id"] for j in canceled["jobs"]] == [mine[1]]
    assert other not in {j["id"] for j in api.get("/v1/jobs", headers={"X-API-Key": "owner-a"}).json()["jobs"]}
    record = first["jobs"][0]
    assert record["seed"] == 4 and record["seed_source"] == "request"
    assert api.get("/v1/jobs", params={"status": "lost"}).status_code == 422


def test_unknown_job_and_token_are_404_json(api):
    for path in ("/v1/jobs/nope", "/v1/jobs/nope/images/0", "/v1/tokens/circle-3-0000000000000000",
                 "/v1/tokens/..%2F..%2Fetc"):
        response = api.get(path)
        assert response.status_code == 404 and response.json()["code"] == "not_found", path
    assert api.delete("/v1/tokens/circle-3-0000000000000000").status_code == 404


def test_bad_token_uploads_are_refused(api):
    corrupt = api.post("/v1/tokens", content=b"\x10" * 64)
    assert corrupt.status_code == 422 and corrupt.json()["code"] == "invalid_token"
    huge = api.post("/v1/tokens", content=b"0" * (3 << 20))
    assert huge.status_code == 413


def test_readiness_needs_a_live_worker(api):
    response = api.get("/readyz")
    assert response.status_code == 503 and response.json()["code"] == "no_worker"


def test_models_describe_their_configuration(api):
    models = api.get("/v1/models").json()
    assert [m["id"] for m in models] == ["reference", "reference-web"]  # both reference models by default
    for model in models:
        assert model["classes"] == ["circle", "square", "triangle", "cross"]  # the doubt class is no object
        assert model["max_count"] == 12 and model["live_workers"] == []
        assert model["default_policy"] in ("resample", "library", "refine")


def test_a_token_learned_by_the_cli_is_listed_by_the_api_at_once(api, settings, tally_cli, monkeypatch):
    env = {"TALLY_REDIS_PREFIX": settings.redis_prefix, "TALLY_TOKEN_DIR": str(settings.tokens_path)}
    assert api.get("/v1/tokens").json() == []
    args = ("optimize", "--object", "circle", "--count", "3", "--iterations", "1", "--seeds-per-iteration", "1",
            "--validation-seeds", "2")
    # A bar no token can clear on two validation seeds (a gain of 1.0 would need 2 of 2 exact over a base of 0 of 2,
    # and one iteration has no validation after it): nothing is stored.
    no_gain = tally_cli(*args, "--min-gain", "1", env=env)
    assert no_gain.returncode == 0 and "NOT stored" in no_gain.stderr, no_gain.stderr
    assert api.get("/v1/tokens").json() == []
    result = tally_cli(*args, "--min-gain", "-1", "--max-gain-p", "1", env=env)
    assert result.returncode == 0, result.stderr
    [token] = api.get("/v1/tokens").json()
    assert token["object"] == "circle" and token["count"] == 3 and token["metadata"]["mode"] == "library"
    assert (settings.tokens_path / f"{token['key']}.safetensors").is_file()
    listed = tally_cli("tokens", "list", "--json", env=env)
    assert token["key"] in listed.stdout
    deleted = tally_cli("tokens", "delete", token["key"], env=env)
    assert deleted.returncode == 0, deleted.stderr
    assert api.get("/v1/tokens").json() == []


def test_api_answers_503_while_redis_is_away_and_recovers(tmp_path):
    port = free_port()
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(tmp_path)]
    client = TestClient(create_app(Settings(redis_url=f"redis://127.0.0.1:{port}/0")))

    def start():
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
        for _ in range(50):
            try:
                redis.Redis(port=port).ping()
                return proc
            except redis.ConnectionError:
                time.sleep(0.1)
        raise RuntimeError("redis did not start")

    server = start()
    assert client.get("/v1/tokens").status_code == 200
    server.terminate()
    server.wait()
    t = time.monotonic()
    response = client.get("/v1/tokens")
    assert response.status_code == 503 and response.json()["code"] == "redis_unavailable"
    assert client.post("/v1/jobs", json={"prompt": "a photo of circles", "count": 2}).status_code == 503
    assert time.monotonic() - t < 10
    server = start()
    try:
        assert client.get("/v1/tokens").status_code == 200
    finally:
        server.terminate()
        server.wait()
