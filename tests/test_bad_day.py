"""A bad day, with real processes and a real Redis: key changes racing each other in several processes, jobs
whose model has no worker, a flushed Redis, revoked keys with open streams, streams past a key's cap, event
ids out of range, pages of a filtered listing, images that are not images."""

from __future__ import annotations

import time

import httpx
import pytest
import redis
import torch
from fastapi.testclient import TestClient

from service.app import create_app
from workers.auth import KeyStore
from workers.keys import Keys

from .conftest import serve_api

JOB = {"prompt": "a photo of red circles", "count": 3, "queue_if_offline": True}


# ------------------------------------------------------------------------------------------ keys
def test_no_revocation_and_no_key_is_lost_when_create_revoke_and_reseed_race_in_three_processes(settings):
    from tally.benchmarks.bad_day import key_race

    figures = key_race(settings, rounds=40)  # in Redis (the API's truth), the file, and `tally keys list`
    assert figures == {"rounds": 40, "revocations_lost": 0, "keys_lost": 0}
    store = KeyStore(redis.Redis.from_url(settings.redis_url), settings)
    store.reseed()  # an API process starting now lifts nothing either
    assert sum(r.revoked for r in store._redis_records().values()) == 40


def test_a_stream_of_a_revoked_key_ends_with_an_error_event(settings):
    settings = settings.model_copy(update={"auth": "required", "sse_heartbeat_s": 1.0})
    store = KeyStore(redis.Redis.from_url(settings.redis_url), settings)
    secret, key = store.create("watcher")
    with TestClient(create_app(settings)) as api:
        headers = {"Authorization": f"Bearer {secret}"}
        job = api.post("/v1/jobs", json=JOB, headers=headers).json()["id"]
        with api.stream("GET", f"/v1/jobs/{job}/events", headers=headers) as stream:
            lines = stream.iter_lines()
            assert next(lines).startswith("id: ")  # the queued event: the stream is live
            store.revoke(key.id)
            rest = list(lines)  # ends by itself (a live key's stream would go on with heartbeats)
        assert "event: error" in rest and any('"unauthorized"' in line for line in rest), rest
        assert api.get(f"/v1/jobs/{job}", headers=headers).status_code == 401


# ------------------------------------------------------------------------------------------ streams
def test_a_key_holds_at_most_max_streams_per_key_open_streams(settings):
    settings = settings.model_copy(update={"max_streams_per_key": 2, "sse_heartbeat_s": 1.0})
    with serve_api(settings) as port, httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
        job = http.post("/v1/jobs", json=JOB).json()["id"]
        with http.stream("GET", f"/v1/jobs/{job}/events") as first, http.stream("GET", f"/v1/jobs/{job}/events") as second:
            assert first.status_code == second.status_code == 200
            third = http.get(f"/v1/jobs/{job}/events")
            assert third.status_code == 429 and third.json()["code"] == "too_many_streams", third.text
            assert http.get("/v1/jobs", headers={"X-API-Key": "someone else"}).status_code == 200
        deadline = time.monotonic() + 5  # the server sees the clients go and gives their slots back
        while time.monotonic() < deadline:
            with http.stream("GET", f"/v1/jobs/{job}/events") as again:
                if again.status_code == 200:
                    break
            time.sleep(0.2)
        assert again.status_code == 200


@pytest.mark.parametrize("event_id", ["99999999999999999999-0", "0-18446744073709551616", "1-", "x-1"])
def test_a_last_event_id_outside_what_redis_writes_is_422(api, event_id):
    job = api.post("/v1/jobs", json=JOB).json()["id"]
    response = api.get(f"/v1/jobs/{job}/events", headers={"Last-Event-ID": event_id})
    assert response.status_code == 422 and "Last-Event-ID" in response.json()["message"], response.text


# ------------------------------------------------------------------------------------------ jobs end
def test_a_job_whose_model_has_no_worker_fails_with_no_worker_after_the_timeout(settings):
    settings = settings.model_copy(update={"no_worker_timeout_s": 2.0})
    with TestClient(create_app(settings)) as api:
        job = api.post("/v1/jobs", json=JOB).json()["id"]
        submitted = time.monotonic()
        while api.get(f"/v1/jobs/{job}").json()["status"] == "queued" and time.monotonic() - submitted < 20:
            time.sleep(0.2)
        record = api.get(f"/v1/jobs/{job}").json()
        waited = time.monotonic() - submitted
    assert record["status"] == "failed" and record["error"]["code"] == "no_worker", record
    assert 2.0 <= waited <= 2.0 + 5, waited  # the timeout, plus at most a few upkeep periods
    connection = redis.Redis.from_url(settings.redis_url)
    from workers.queue import generation_queue

    assert job not in generation_queue(connection, settings, "reference").get_job_ids()  # no worker runs it later


def test_a_token_library_lost_with_a_redis_flush_is_indexed_again_by_the_api(settings, t2i):
    from optimization.count_token import CountToken, TokenKey

    token = CountToken(TokenKey(t2i.fingerprint, "circle", 3), {"clip_l": torch.full((128,), 0.1)},
                       metadata={"mode": "library"})
    token.save(settings.tokens_path / TokenKey(t2i.fingerprint, "circle", 3).filename)
    settings = settings.model_copy(update={"no_worker_timeout_s": 3.0})  # an upkeep period of 1 s
    with TestClient(create_app(settings)) as api:
        deadline = time.monotonic() + 10
        while not api.get("/v1/tokens").json() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert [t["key"] for t in api.get("/v1/tokens").json()] == [token.key.id]
        redis.Redis.from_url(settings.redis_url).flushdb()
        deadline = time.monotonic() + 10
        while not api.get("/v1/tokens").json() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert [t["key"] for t in api.get("/v1/tokens").json()] == [token.key.id]


# ------------------------------------------------------------------------------------------ listing
def test_a_status_filtered_page_reads_only_that_status_index(settings):
    settings = settings.model_copy(update={"max_active_jobs": 100})
    with TestClient(create_app(settings)) as api:
        _filtered_pages(api, settings)


def _filtered_pages(api, settings) -> None:
    jobs = [api.post("/v1/jobs", json=JOB).json()["id"] for _ in range(60)]
    canceled = jobs[5:60:10]
    for job in canceled:
        assert api.delete(f"/v1/jobs/{job}").json()["status"] == "canceled"
    page = api.get("/v1/jobs", params={"status": "canceled", "limit": 2}).json()
    assert [j["id"] for j in page["jobs"]] == canceled[::-1][:2]
    rest = api.get("/v1/jobs", params={"status": "canceled", "limit": 50, "cursor": page["next_cursor"]}).json()
    assert [j["id"] for j in rest["jobs"]] == canceled[::-1][2:] and rest["next_cursor"] is None
    connection, k = redis.Redis.from_url(settings.redis_url), Keys(settings.redis_prefix)
    owner = "anonymous"
    assert {m.decode() for m in connection.zrange(k.owner_jobs(owner, "canceled"), 0, -1)} == set(canceled)
    assert {m.decode() for m in connection.zrange(k.owner_jobs(owner, "queued"), 0, -1)} == set(jobs) - set(canceled)


# ------------------------------------------------------------------------------------------ not images
@pytest.fixture(scope="module")
def engine(t2i, counter, reference_spec):
    from optimization.counter import load_crosscheck
    from optimization.engine import CountEngine

    return CountEngine(t2i, counter, reference_spec, crosscheck=load_crosscheck(reference_spec.crosscheck))


def test_an_image_that_is_not_an_image_is_never_verified_and_never_a_closest_miss(engine):
    drawn = engine.t2i.generate("a photo of 3 red circles", [0])
    black, grey = torch.zeros_like(drawn), torch.full_like(drawn, 0.5)
    nan = drawn.clone()
    nan[0, 0, 0, 0] = float("nan")
    images = torch.cat([drawn, black, grey, nan])
    verdicts = engine.verify_images(images, engine.counter.detect(images.nan_to_num(0.0)), "circle", 3)
    assert [v.degenerate for v in verdicts] == [False, True, True, True]
    assert [v.reason for v in verdicts[1:]] == ["degenerate_image"] * 3 and not any(v.verified for v in verdicts[1:])
    assert verdicts[0].miss < verdicts[1].miss == float("inf")


@pytest.mark.parametrize("value", [3e38, float("nan")])
def test_a_library_token_beyond_the_model_is_not_used_wherever_it_was_stored(runtime, value):
    from optimization.count_token import CountToken

    engine, store = runtime.engine, runtime.store
    key = engine.token_key("circle", 3)
    broken = CountToken(key, {"clip_l": torch.full((128,), value)}, metadata={"mode": "library"})
    broken.save(runtime.settings.tokens_path / key.filename)  # by hand, past the import's checks
    runtime.connection.delete(store.keys.token(key.id))
    assert store.token_for(engine, "circle", 3) is None  # a miss, not a job of black images
    with pytest.raises(Exception, match="tokens stay below|norm nan"):
        engine.check_token(broken)
    if value != value:  # NaN: the store does not even index or serve it
        assert store.reseed() == 0 and store.get(key.id) is None


# ------------------------------------------------------------------------------------------ Redis trouble
def test_a_full_redis_is_named_survived_by_the_worker_and_strands_no_job(tmp_path):
    from .conftest import launch_service

    with launch_service(tmp_path) as service:
        job = service.submit(prompt="a photo of red circles", count=10, policy="resample",
                             budget={"max_seconds": 40, "max_candidates": 1024})
        service.wait(job, timeout=60, until=("running",))
        r = service.redis
        r.config_set("maxmemory-policy", "noeviction")
        r.config_set("maxmemory", max(1, r.info("memory")["used_memory"] - (1 << 20)))  # full: writes refused
        try:
            time.sleep(4)  # the worker's next progress write is refused meanwhile
            ready = service.http.get("/readyz")
            assert ready.status_code == 503 and ready.json()["code"] == "redis_full", ready.text
            assert service.http.get(f"/v1/jobs/{job}").status_code == 200  # reads need no write
            time.sleep(3)  # the worker's heartbeat lapses meanwhile: still named as the Redis trouble it is
            refused = service.http.post("/v1/jobs", json=JOB)
            assert refused.status_code == 503 and refused.json()["code"] == "redis_full", refused.text
            metrics = service.http.get("/metrics").text
            assert 'tally_api_redis_errors_total{trouble="redis_full"}' in metrics
            assert [line for line in metrics.splitlines() if line.startswith(
                'tally_api_redis_errors_total{trouble="redis_full"}')][0].split()[-1] != "0.0"
        finally:
            r.config_set("maxmemory", 0)
        record = service.wait(job, timeout=180)
        assert record["status"] == "succeeded", record  # requeued once Redis took writes, then finished
        assert service.launcher.processes["worker-w1"].poll() is None  # the worker never exited
        deadline = time.monotonic() + 10  # the worker is live again once its next heartbeat lands
        while (ready := service.http.get("/readyz").json()).get("workers", {}).get("reference") != 1 \
                and time.monotonic() < deadline:
            time.sleep(0.2)
        assert ready["workers"]["reference"] == 1, ready  # (reference-web has no worker in this test)


def test_a_500_closes_its_connection_so_the_next_request_gets_a_fresh_one(settings):
    from service.app import create_app as make

    app = make(settings)

    def broken() -> None:
        raise RuntimeError("a bug")

    app.add_api_route("/broken", broken)  # stands for any bug; the error path is the app's own
    import threading

    import uvicorn

    from .conftest import free_port

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as http:  # one pooled connection
            for _ in range(3):
                failed = http.get("/broken")
                assert failed.status_code == 500 and failed.headers["Connection"] == "close"
                assert failed.json()["code"] == "internal"
                assert http.get("/healthz").status_code == 200  # never ECONNRESET
    finally:
        server.should_exit = True


def test_a_read_only_replica_is_named_redis_readonly_and_reads_go_on(settings, redis_url, tmp_path):
    import shutil
    import subprocess

    from .conftest import free_port

    port = free_port()
    primary = redis_url.split("//")[1].split("/")[0].split(":")
    replica = subprocess.Popen([shutil.which("redis-server"), "--port", str(port), "--save", "", "--appendonly", "no",
                                "--dir", str(tmp_path), "--replicaof", *primary], stdout=subprocess.DEVNULL)
    try:
        replica_url = f"redis://127.0.0.1:{port}/0"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if redis.Redis.from_url(replica_url).info("replication").get("master_link_status") == "up":
                    break
            except redis.ConnectionError:
                pass
            time.sleep(0.1)
        with TestClient(create_app(settings)) as api:
            job = api.post("/v1/jobs", json=JOB).json()["id"]
        with TestClient(create_app(settings.model_copy(update={"redis_url": replica_url}))) as api:
            deadline = time.monotonic() + 5  # the replica has the job once replication caught up
            while api.get(f"/v1/jobs/{job}").status_code != 200 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert api.get(f"/v1/jobs/{job}").status_code == 200
            refused = api.post("/v1/jobs", json=JOB)
            assert refused.status_code == 503 and refused.json()["code"] == "redis_readonly", refused.text
            assert api.get("/readyz").json()["code"] == "redis_readonly"
            metrics = api.get("/metrics")  # its own figures while Redis refuses writes: the two refusals and this one
            assert metrics.status_code == 200 and 'tally_api_redis_errors_total{trouble="redis_readonly"} 3.0' in metrics.text
    finally:
        replica.terminate()
        replica.wait()
