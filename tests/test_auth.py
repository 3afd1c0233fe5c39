"""Keys, scopes, ownership and quotas with ``auth=required``, in-process on a private Redis."""

from __future__ import annotations

import json
import uuid

import pytest
import redis
from fastapi.testclient import TestClient

from optimization.config import Budget
from service.app import create_app
from workers.auth import KeyStore
from workers.settings import Settings

JOB = {"prompt": "a photo of red circles", "count": 3, "queue_if_offline": True}


@pytest.fixture
def settings(redis_url, tmp_path):
    return Settings(auth="required", redis_url=redis_url, redis_prefix=f"a{uuid.uuid4().hex[:8]}",
                    runtime_dir=tmp_path / "runtime", token_dir=tmp_path / "tokens", rate_limit="1000/minute")


@pytest.fixture
def keys(settings):
    return KeyStore(redis.Redis.from_url(settings.redis_url), settings)


@pytest.fixture
def api(settings, keys):
    with TestClient(create_app(settings)) as client:
        yield client


def _bearer(secret: str) -> dict:
    return {"Authorization": f"Bearer {secret}"}


def test_no_key_or_an_unknown_key_is_401_with_what_to_send(api):
    for headers in ({}, _bearer("tally_nope"), {"X-API-Key": "tally_nope"}):
        response = api.get("/v1/jobs", headers=headers)
        assert response.status_code == 401 and response.json()["code"] == "unauthorized"
        assert response.headers["WWW-Authenticate"] == "Bearer"
    assert "Authorization: Bearer" in api.post("/v1/jobs", json=JOB).json()["message"]
    assert api.get("/healthz").status_code == 200  # health needs no key


def test_keys_are_created_by_the_cli_shown_once_and_stored_hashed(api, settings, tally_cli):
    env = {"TALLY_AUTH": "required", "TALLY_REDIS_PREFIX": settings.redis_prefix,
           "TALLY_KEYS_FILE": str(settings.keys_path)}
    result = tally_cli("keys", "create", "--name", "ci", "--scope", "user", "--json", "-", env=env)
    assert result.returncode == 0, result.stderr
    created = json.loads(result.stdout)
    assert set(created) == {"key", "name", "scope", "id"} and created["scope"] == "user"
    assert created["key"] not in settings.keys_path.read_text()  # only its hash is kept
    listed = tally_cli("keys", "list", "--json", env=env)
    assert created["key"] not in listed.stdout and json.loads(listed.stdout)[0]["name"] == "ci"
    for headers in (_bearer(created["key"]), {"X-API-Key": created["key"]}):
        assert api.get("/v1/jobs", headers=headers).status_code == 200
    assert tally_cli("keys", "revoke", "ci", env=env).returncode == 0
    assert api.get("/v1/jobs", headers=_bearer(created["key"])).status_code == 401
    bad = tally_cli("keys", "create", "--name", "x", "--scope", "root", env=env)
    assert bad.returncode == 2 and "scope must be one of user, admin" in bad.stderr


def test_another_keys_job_does_not_exist_for_you_on_any_route(api, keys):
    alice, _ = keys.create("alice")
    bob, _ = keys.create("bob")
    job = api.post("/v1/jobs", json=JOB, headers=_bearer(alice)).json()["id"]
    for method, path in (("GET", f"/v1/jobs/{job}"), ("GET", f"/v1/jobs/{job}/events"),
                         ("GET", f"/v1/jobs/{job}/images/0"), ("DELETE", f"/v1/jobs/{job}")):
        response = api.request(method, path, headers=_bearer(bob))
        assert response.status_code == 404 and response.json()["code"] == "not_found", (method, path)
    assert job not in {j["id"] for j in api.get("/v1/jobs", headers=_bearer(bob)).json()["jobs"]}
    assert api.get(f"/v1/jobs/{job}", headers=_bearer(alice)).json()["status"] == "queued"


def test_writing_the_token_library_needs_an_admin_key(api, keys):
    user, _ = keys.create("user")
    admin, _ = keys.create("admin", "admin")
    assert api.get("/v1/tokens", headers=_bearer(user)).status_code == 200  # reading: any key
    for method, path in (("POST", "/v1/tokens"), ("DELETE", "/v1/tokens/circle-3-0000000000000000"),
                         ("DELETE", "/v1/tokens/learning/circle-3-0000000000000000")):
        response = api.request(method, path, headers=_bearer(user), content=b"x" * 64)
        assert response.status_code == 403 and response.json()["code"] == "forbidden", path
        assert api.request(method, path, headers=_bearer(admin), content=b"x" * 64).status_code in (404, 422)


def test_a_redis_flush_locks_nobody_out(api, keys, settings):
    secret, _ = keys.create("survivor")
    redis.Redis.from_url(settings.redis_url).delete(keys.index)
    assert api.get("/v1/jobs", headers=_bearer(secret)).status_code == 200


def test_rate_limit_and_active_jobs_quota_answer_429_saying_which(api, keys, settings):
    limited, _ = keys.create("limited", rate_limit="3/minute")
    codes = [api.get("/v1/jobs", headers=_bearer(limited)).status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    response = api.get("/v1/jobs", headers=_bearer(limited))
    assert response.json()["code"] == "rate_limited" and "3 per 1 minute" in response.json()["message"]
    assert 1 <= int(response.headers["Retry-After"]) <= 60
    busy, _ = keys.create("busy", max_active_jobs=2)
    codes = [api.post("/v1/jobs", json=JOB, headers=_bearer(busy)).status_code for _ in range(3)]
    assert codes == [202, 202, 429]
    first = api.get("/v1/jobs", headers=_bearer(busy)).json()["jobs"][-1]["id"]
    api.delete(f"/v1/jobs/{first}", headers=_bearer(busy))  # one ends: room again
    assert api.post("/v1/jobs", json=JOB, headers=_bearer(busy)).status_code == 202
    metrics = api.get("/metrics").text
    assert 'tally_rejections_total{reason="rate_limited"}' in metrics
    assert 'tally_rejections_total{reason="quota_active_jobs"}' in metrics


def test_a_keys_budget_ceiling_bounds_its_jobs(api, keys):
    small, _ = keys.create("small", max_budget=Budget(max_seconds=5, max_candidates=16, max_iterations=10))
    response = api.post("/v1/jobs", json={**JOB, "budget": {"max_candidates": 64}}, headers=_bearer(small))
    assert response.status_code == 422 and "budget.max_candidates: at most 16" in response.json()["message"]
    assert api.post("/v1/jobs", json={**JOB, "budget": {"max_candidates": 16}}, headers=_bearer(small)).status_code == 202


def test_every_route_states_its_scope(api):
    paths = api.get("/openapi.json").json()["paths"]
    for path, operations in paths.items():
        if path.startswith("/v1/"):
            for method, op in operations.items():
                assert "Scope:" in op.get("description", ""), f"{method.upper()} {path}"
