"""Jobs as users expect them, on real processes: learning never blocks a user's job for long, stopping or
killing a worker loses no job, Redis restarts and vanished clients do not stall the service."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
import redis

from workers.keys import Keys

from .conftest import free_port, launch_service

pytestmark = pytest.mark.slow
LONG_REFINE = {"prompt": "a photo of black crosses", "count": 12, "num_images": 8, "policy": "refine",
               "budget": {"max_seconds": 120, "max_candidates": 8, "max_iterations": 400}}


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    env = {"TALLY_LIBRARY__MAX_ITERATIONS": "400", "TALLY_LIBRARY__SEEDS_PER_ITERATION": "2", "TALLY_LIBRARY__CALIBRATION_SEEDS": "4",
           "TALLY_LIBRARY__VALIDATION_SEEDS": "4", "TALLY_LIBRARY__VALIDATE_EVERY": "5",
           "TALLY_LIBRARY_SLICE_SECONDS": "1", "TALLY_SSE_HEARTBEAT_S": "1"}
    with launch_service(tmp_path_factory.mktemp("lifecycle"), env) as service:
        yield service


def _worker_pid(service) -> int:
    return service.launcher.processes["worker-w1"].pid


def test_a_user_job_waits_at_most_a_slice_behind_library_learning_which_is_visible_and_cancelable(service):
    first = service.wait(service.submit(prompt="a photo of red triangles", count=9, seed=1, policy="library",
                                        budget={"max_candidates": 8}))
    key = first["token"]["key"]
    assert first["token"]["learning_scheduled"] is True
    deadline = time.monotonic() + 60
    while not any(t["key"] == key and t["slices"] >= 1 for t in service.http.get("/v1/tokens/learning").json()):
        assert time.monotonic() < deadline, "the library task never finished a slice"
        time.sleep(0.2)
    waits = []
    for seed in range(3):  # 400 iterations would hold the worker for minutes without slices
        record = service.wait(service.submit(prompt="a photo of blue circles", count=2, seed=seed,
                                             policy="resample", budget={"max_candidates": 8}), timeout=60)
        waits.append(record["timings"]["started"] - record["timings"]["submitted"])
    assert max(waits) < 10, waits
    [task] = [t for t in service.http.get("/v1/tokens/learning").json() if t["key"] == key]
    assert task["status"] in ("queued", "running") and task["iterations"] < task["max_iterations"]
    assert service.http.delete(f"/v1/tokens/learning/{key}").status_code == 202
    deadline = time.monotonic() + 30
    while (task := next(t for t in service.http.get("/v1/tokens/learning").json() if t["key"] == key))["status"] != "canceled":
        assert time.monotonic() < deadline, task
        time.sleep(0.2)
    assert service.http.get(f"/v1/tokens/{key}").status_code == 404  # a canceled task stores nothing
    assert service.http.delete(f"/v1/tokens/learning/{key}").status_code == 404


def test_sigterm_puts_the_running_job_back_and_the_worker_exits_within_seconds(service):
    job = service.submit(**LONG_REFINE, seed=4)
    service.wait(job, timeout=60, until=("running",))
    time.sleep(1.5)
    proc = service.launcher.processes["worker-w1"]
    t = time.monotonic()
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)
    assert time.monotonic() - t < 15 and proc.returncode == 0
    record = service.record(job)
    assert record["status"] == "queued" and record["queue_position"] == 0
    service.launcher.processes.pop("worker-w1")
    service.start_worker()
    service.wait(job, timeout=60, until=("running",))
    service.http.delete(f"/v1/jobs/{job}")
    assert service.wait(job, timeout=30)["status"] == "canceled"


def test_a_killed_workers_job_runs_again_on_the_restarted_worker(service):
    # eight images of twelve: it is still running when its worker is killed (the reference model now draws
    # one image of twelve crosses in well under a second)
    job = service.submit(prompt="a photo of black crosses", count=12, num_images=8, seed=5, policy="refine",
                         budget={"max_seconds": 6, "max_candidates": 8, "max_iterations": 400})
    service.wait(job, timeout=60, until=("running",))
    time.sleep(1)
    proc = service.launcher.processes.pop("worker-w1")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    t = time.monotonic()
    service.start_worker()  # the same name: its stale registration must not stop it
    record = service.wait(job, timeout=120)
    assert record["status"] == "succeeded" and record["timings"]["started"] > t - 60
    events = httpx.get(f"{service.url}/v1/jobs/{job}/events", timeout=30).text
    assert '"requeued": true' in events


def test_a_dead_workers_job_is_recovered_by_another_live_worker_within_seconds(service):
    service.start_worker("w2")
    job = service.submit(prompt="a photo of black crosses", count=12, seed=6, policy="refine",
                         budget={"max_seconds": 4, "max_candidates": 8, "max_iterations": 400})
    record = service.wait(job, timeout=60, until=("running",))
    runner = json.loads(service.redis.get(Keys(service.settings.redis_prefix).worker("reference", "w1")) or "{}")
    victim = "worker-w1" if service.redis.hget(f"rq:job:{job}", "worker_name") == b"w1" else "worker-w2"
    proc = service.launcher.processes.pop(victim)
    os.killpg(proc.pid, signal.SIGKILL)
    t = time.monotonic()
    record = service.wait(job, timeout=90)
    assert record["status"] == "succeeded" and time.monotonic() - t < 60, (record, runner)
    if victim == "worker-w1":
        service.start_worker("w1")
    service.launcher.stop("worker-w2")


def test_the_worker_survives_a_redis_restart(service):
    pid = _worker_pid(service)
    service.launcher.stop("redis")
    time.sleep(3)
    assert service.http.get("/v1/tokens").status_code == 503
    service.launcher.ensure_redis()
    deadline = time.monotonic() + 60
    while not service.http.get("/v1/models").json()[0]["live_workers"]:
        assert time.monotonic() < deadline, "the worker did not come back"
        time.sleep(0.5)
    record = service.wait(service.submit(prompt="a photo of red squares", count=2, seed=7, policy="resample",
                                         budget={"max_candidates": 8}), timeout=60)
    assert record["status"] == "succeeded" and _worker_pid(service) == pid


def test_event_streams_of_vanished_clients_are_released_and_idle_ones_get_heartbeats(service):
    blocker = service.submit(**LONG_REFINE, seed=8)  # keeps the worker busy ...
    service.wait(blocker, timeout=60, until=("running",))
    queued = service.submit(prompt="a photo of red circles", count=3, seed=9)  # ... so this one waits, silent
    port = int(service.url.rsplit(":", 1)[1])
    sockets = []
    for _ in range(200):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(f"GET /v1/jobs/{queued}/events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n".encode())
        sockets.append(s)
    for s in sockets:
        s.recv(1024)  # the stream has started
        s.close()  # ... and its client vanishes
    latencies = []
    for _ in range(20):
        t = time.perf_counter()
        assert service.http.get("/healthz").status_code == 200
        latencies.append(time.perf_counter() - t)
    assert sorted(latencies)[10] < 0.1, latencies
    with httpx.stream("GET", f"{service.url}/v1/jobs/{queued}/events", timeout=10) as stream:
        lines, t = [], time.monotonic()
        for line in stream.iter_lines():
            lines.append(line)
            if line.startswith(": heartbeat") or time.monotonic() - t > 5:
                break
    assert any(line.startswith(": heartbeat") for line in lines), lines
    for job in (queued, blocker):
        service.http.delete(f"/v1/jobs/{job}")
        assert service.wait(job, timeout=30)["status"] == "canceled"


def test_tally_up_restarts_cleanly_after_being_killed_and_its_children_do_not_linger(tmp_path):
    redis_url = f"redis://127.0.0.1:{free_port()}/0"
    port = free_port()
    env = {**os.environ, "TALLY_REDIS_URL": redis_url, "TALLY_RUNTIME_DIR": str(tmp_path / "runtime"),
           "TALLY_TOKEN_DIR": str(tmp_path / "tokens"), "TALLY_WORKER_HEARTBEAT_S": "1"}
    tally = os.path.join(os.path.dirname(sys.executable), "tally")

    def up() -> subprocess.Popen:
        proc = subprocess.Popen([tally, "up", "--port", str(port)], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, "tally up exited"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    return proc
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "tally up was not ready"
            time.sleep(0.5)

    first = up()
    job = httpx.post(f"http://127.0.0.1:{port}/v1/jobs", json={**LONG_REFINE, "seed": 10}).json()["id"]
    time.sleep(3)
    first.send_signal(signal.SIGKILL)  # no chance to clean up
    first.wait()
    deadline = time.monotonic() + 20
    while True:  # the API and the worker got SIGTERM from the kernel and left
        try:
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
        except httpx.HTTPError:
            break
        assert time.monotonic() < deadline, "the API outlived tally up"
        time.sleep(0.5)
    second = up()
    try:
        record = httpx.get(f"http://127.0.0.1:{port}/v1/jobs/{job}").json()
        assert record["status"] in ("queued", "running")  # not lost: it runs again
        httpx.delete(f"http://127.0.0.1:{port}/v1/jobs/{job}")
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=40)
    finally:
        if second.poll() is None:
            os.killpg(second.pid, signal.SIGKILL)
        redis.Redis.from_url(redis_url).shutdown(nosave=True) if _answers(redis_url) else None


def _answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


def test_jobs_survive_a_worker_killed_every_few_seconds_and_a_redis_restart():
    """The fault scenarios of ``tally bench faults`` (each on private processes), as specifications."""
    from tally.benchmarks.faults import redis_restart, worker_kill

    kills = worker_kill(jobs=10, every_s=3.0)  # a restart takes seconds here: two or three kills fit
    assert kills["kills"] >= 2 and kills["lost"] == 0 and kills["duplicated"] == 0, kills
    restart = redis_restart(jobs=4)
    assert restart["api_status_while_down"] == 503 and restart["lost"] == 0, restart


def test_tally_up_serves_the_models_it_can_and_names_the_others_unless_all_or_nothing(tmp_path):
    from optimization.reference.models import reference_model

    working = reference_model()
    missing = working.model_copy(update={"id": "missing", "pipeline": str(tmp_path / "no-such-pipeline")})
    redis_url = f"redis://127.0.0.1:{free_port()}/0"
    port = free_port()
    env = {**os.environ, "TALLY_REDIS_URL": redis_url, "TALLY_RUNTIME_DIR": str(tmp_path / "runtime"),
           "TALLY_TOKEN_DIR": str(tmp_path / "tokens"), "TALLY_WORKER_HEARTBEAT_S": "1",
           "TALLY_MODELS": json.dumps([working.model_dump(mode="json"), missing.model_dump(mode="json")])}
    tally = os.path.join(os.path.dirname(sys.executable), "tally")

    strict = subprocess.run([tally, "up", "--port", str(port), "--all-or-nothing"], env=env, capture_output=True,
                            text=True, timeout=60)
    assert strict.returncode == 2 and "model missing: no diffusers pipeline at" in strict.stderr + strict.stdout

    proc = subprocess.Popen([tally, "up", "--port", str(port)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                workers = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).json().get("workers", {})
                if workers.get("reference"):
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "tally up did not serve the reference model"
            time.sleep(0.5)
        assert workers == {"reference": 1, "missing": 0}
        refused = httpx.post(f"http://127.0.0.1:{port}/v1/jobs", json={"prompt": "a photo of red circles", "count": 2,
                                                                        "model": "missing"})
        assert refused.status_code == 503 and refused.json()["code"] == "no_worker"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        output = proc.communicate(timeout=40)[0]
        redis.Redis.from_url(redis_url).shutdown(nosave=True) if _answers(redis_url) else None
    assert "not serving model missing" in output and "no diffusers pipeline at" in output
