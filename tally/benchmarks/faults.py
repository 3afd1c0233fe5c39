"""``tally bench faults``: the service under faults and abuse, on this machine's loopback, bounded in time.

Each scenario starts from a private Redis (AOF, ``appendfsync everysec``), the API and workers
(``tally.launcher``) and reports what a customer would care about:
- ``worker_kill``: jobs while a worker is SIGKILLed and restarted every few seconds: lost, run twice;
- ``worker_term``: SIGTERM mid-job: the worker's exit status and time, and whether the job still ends well;
- ``redis_restart``: Redis stopped and restarted under queued and running jobs: lost jobs;
- ``bola``: another key's job on every job route: how many answers were not 404;
- ``quota``: one key flooding the queue: another key's median queue wait, flooded vs alone;
- ``fuzz``: schemathesis over the whole OpenAPI document (``fuzz.fuzz_openapi``): server errors and
  responses that break the document;
- and the bad day's (``bad_day``): ``key_race``, ``redis_full``, ``import_race``, ``no_worker``,
  ``degenerate_token``, ``list_amplification``.
"""

from __future__ import annotations

import os
import random
import signal
import statistics
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import httpx

from tally.launcher import Launcher
from workers.settings import Settings

from .common import free_port

QUICK_JOB = {"prompt": "a photo of red circles", "count": 3, "policy": "resample", "budget": {"max_candidates": 16}}
# A job that runs its whole budget however well the model counts (eight verified images of eleven crosses out of
# eight candidates), so that kills land while jobs are running.
REFINE_JOB = {"prompt": "a photo of black crosses", "count": 11, "num_images": 8, "policy": "refine",
              "budget": {"max_seconds": 4, "max_candidates": 8, "max_iterations": 400}}


@contextmanager
def _service(workers: int, auth: str = "off", env: dict | None = None):
    root = Path(tempfile.mkdtemp(prefix="tally-bench-faults-"))
    redis_url = f"redis://127.0.0.1:{free_port()}/0"
    env = {"TALLY_REDIS_URL": redis_url, "TALLY_RUNTIME_DIR": str(root), "TALLY_TOKEN_DIR": str(root / "tokens"),
           "TALLY_WORKER_HEARTBEAT_S": "1", "TALLY_AUTH": auth, **(env or {})}
    settings = Settings(redis_url=redis_url, runtime_dir=root, token_dir=root / "tokens", auth=auth)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with Launcher(settings, env=env, log_dir=root / "logs") as launcher:
        launcher.ensure_redis()
        launcher.start_api("127.0.0.1", port)
        for i in range(workers):
            launcher.start_worker("reference", f"w{i}")
        launcher.wait_ready(url, timeout=300, models=["reference"] if workers else [])  # [] : the API answers
        with httpx.Client(base_url=url, timeout=30) as http:
            yield launcher, http, settings


def _wait_all(http: httpx.Client, jobs: list[str], timeout: float, headers: dict | None = None, during=None) -> dict:
    deadline, records = time.monotonic() + timeout, {}
    while time.monotonic() < deadline:
        records = {j: http.get(f"/v1/jobs/{j}", headers=headers).json() for j in jobs}
        if all(r.get("status") in ("succeeded", "failed", "canceled") for r in records.values()):
            break
        if during:
            during()
        time.sleep(0.5)
    return records


def _completions(http: httpx.Client, job: str) -> int:
    """How many times the job ran to success: its ``succeeded`` progress events (the final record aside)."""
    from tally.client import sse_events

    with http.stream("GET", f"/v1/jobs/{job}/events", timeout=30) as stream:
        return sum(name == "progress" and data.get("status") == "succeeded" for name, data in sse_events(stream))


def worker_kill(jobs: int = 12, every_s: float = 4.0, timeout: float = 400) -> dict:
    """Every ``every_s`` seconds (counted once both workers are up again: a start takes seconds here), one
    of the two workers, busy with the queued jobs, is SIGKILLed and started again under the same name."""
    with _service(workers=2) as (launcher, http, _):
        ids = [http.post("/v1/jobs", json={**REFINE_JOB, "seed": s}).json()["id"] for s in range(jobs)]
        kills, last = 0, time.monotonic()
        rng = random.Random(0)

        def kill_one():
            nonlocal kills, last
            live = set(http.get("/v1/models").json()[0]["live_workers"])
            if len(live) < 2:
                last = time.monotonic()  # wait for the restarted worker before the next kill counts down
                return
            if time.monotonic() - last < every_s:
                return
            name = "worker-" + rng.choice(sorted(live))  # with jobs queued, both are busy
            proc = launcher.processes.pop(name)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            launcher.start_worker("reference", name.removeprefix("worker-"))
            kills, last = kills + 1, time.monotonic()

        records = _wait_all(http, ids, timeout, during=kill_one)
        return {"jobs": jobs, "kills": kills, "lost": sum(r["status"] != "succeeded" for r in records.values()),
                "duplicated": sum(_completions(http, j) > 1 for j in ids)}


def worker_term() -> dict:
    with _service(workers=1) as (launcher, http, _):
        job = http.post("/v1/jobs", json={**REFINE_JOB, "seed": 1, "budget": {**REFINE_JOB["budget"], "max_seconds": 8}}).json()["id"]
        deadline = time.monotonic() + 60
        while http.get(f"/v1/jobs/{job}").json()["status"] != "running" and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.5)
        proc = launcher.processes.pop("worker-w0")
        t = time.monotonic()
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
        exit_s = time.monotonic() - t
        requeued = http.get(f"/v1/jobs/{job}").json()["status"]
        launcher.start_worker("reference", "w0")
        record = _wait_all(http, [job], 120)[job]
        return {"jobs": 1, "exit_code": proc.returncode, "exit_s": round(exit_s, 2), "status_after_term": requeued,
                "lost": int(record["status"] != "succeeded"), "duplicated": int(_completions(http, job) > 1)}


def redis_restart(jobs: int = 6) -> dict:
    with _service(workers=1) as (launcher, http, _):
        ids = [http.post("/v1/jobs", json={**QUICK_JOB, "seed": s}).json()["id"] for s in range(jobs)]
        time.sleep(1.0)
        launcher.stop("redis")
        time.sleep(3)
        down = http.get("/v1/tokens").status_code
        launcher.ensure_redis()
        records = _wait_all(http, ids, 180)
        return {"queued": jobs, "api_status_while_down": down,
                "lost": sum(r.get("status") != "succeeded" for r in records.values())}


def bola_and_quota(flood: int = 40) -> dict:
    with _service(workers=1, auth="required", env={"TALLY_MAX_ACTIVE_JOBS": "1000"}) as (launcher, http, settings):
        from workers.auth import KeyStore
        from workers.queue import connect

        store = KeyStore(connect(settings), settings)
        alice = {"Authorization": f"Bearer {store.create('alice')[0]}"}
        bob = {"Authorization": f"Bearer {store.create('bob')[0]}"}
        jobs = [http.post("/v1/jobs", json={**QUICK_JOB, "seed": s}, headers=alice).json()["id"] for s in range(3)]
        _wait_all(http, jobs, 120, headers=alice)
        attempts = leaks = 0
        for job in jobs:
            for method, path in (("GET", f"/v1/jobs/{job}"), ("GET", f"/v1/jobs/{job}/events"),
                                 ("GET", f"/v1/jobs/{job}/images/0"), ("DELETE", f"/v1/jobs/{job}")):
                attempts += 1
                leaks += http.request(method, path, headers=bob).status_code != 404

        def bob_waits(n: int) -> list[float]:
            waits = []
            for s in range(n):
                j = http.post("/v1/jobs", json={**QUICK_JOB, "seed": 100 + s}, headers=bob).json()["id"]
                r = _wait_all(http, [j], 300, headers=bob)[j]
                waits.append(r["timings"]["started"] - r["timings"]["submitted"])
            return waits

        alone = bob_waits(3)
        flooded_ids = [http.post("/v1/jobs", json={**QUICK_JOB, "seed": 200 + s}, headers=alice).json()["id"]
                       for s in range(flood)]
        flooded = bob_waits(3)
        for j in flooded_ids:
            http.delete(f"/v1/jobs/{j}", headers=alice)
        limited = {"Authorization": f"Bearer {store.create('limited', rate_limit='20/minute')[0]}"}
        codes = [http.get("/v1/jobs", headers=limited).status_code for _ in range(30)]
        return {"bola": {"attempts": attempts, "leaks": leaks},
                "quota": {"requests": len(codes), "rejected_429": codes.count(429),
                          "other_key_p50_wait_s": round(statistics.median(flooded), 3),
                          "other_key_p50_wait_alone_s": round(statistics.median(alone), 3), "flood_jobs": flood}}


def fuzz(max_examples: int = 50) -> dict:
    """The API in this process on a private Redis, with a live worker's heartbeat and the reference model's
    info published (as a worker writes them), so every route, token uploads included, is reached in full."""
    from service.app import create_app

    from .bad_day import publish_reference
    from .fuzz import fuzz_openapi

    root = Path(tempfile.mkdtemp(prefix="tally-bench-fuzz-"))
    settings = Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0", runtime_dir=root, token_dir=root / "tokens",
                        auth="off", sse_heartbeat_s=0.05)
    with Launcher(settings, log_dir=root / "logs") as launcher:
        launcher.ensure_redis()
        publish_reference(settings)
        result = fuzz_openapi(create_app(settings), max_examples=max_examples)
    return {**{k: v for k, v in result.items() if k != "problems"}, "problems": result["problems"][:10]}


def run(progress=None) -> dict:
    step = progress or (lambda name: None)
    result = {}
    step("worker kill")
    result["worker_kill"] = worker_kill()
    step("worker SIGTERM")
    result["worker_term"] = worker_term()
    step("redis restart")
    result["redis_restart"] = redis_restart()
    step("bola and quota")
    result.update(bola_and_quota())
    step("fuzz the OpenAPI document")
    result["fuzz"] = fuzz()
    from . import bad_day

    result.update(bad_day.run(step))
    return result
