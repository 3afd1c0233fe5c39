"""The job phases of ``tally bench service``: a library hit against the direct call, single flight, user
jobs behind library learning, the budget's wall, cross-job batching."""

from __future__ import annotations

import statistics
import threading
import time

import httpx
import redis

from workers.settings import Settings
from tally.client import Client
from tally.launcher import Launcher
from workers.keys import Keys


def _percentiles(seconds: list[float]) -> dict:
    """p50 and p99 in milliseconds (p99: the largest below the 99th percentile rank, the max for few samples)."""
    ordered = sorted(seconds)
    return {"p50": round(1000 * statistics.median(ordered), 1),
            "p99": round(1000 * ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 1), "n": len(ordered)}


def library_hit(url: str, secret: str, http: httpx.Client, reference, repeats: int) -> dict:
    """A library hit through the service (event stream) against the same engine call made directly."""
    from optimization.config import Budget
    from optimization.count_token import CountToken
    from optimization.engine import CountEngine

    engine = CountEngine.from_spec(reference)
    cls, count = "triangle", 6
    token = CountToken(engine.token_key(cls, count), engine.word_vectors("of"), "of", {"source": "bench"})
    assert http.post("/v1/tokens", content=token.to_bytes()).status_code == 201
    body = {"prompt": "a photo of blue triangles", "count": count, "seed": 123, "policy": "library",
            "budget": {"max_candidates": 8}}
    service_s, direct_s, waits, runs, engine_s, pushed = [], [], [], [], [], []
    with Client(url, secret, timeout=120) as client:
        for _ in range(repeats + 1):
            t = time.perf_counter()
            record = client.wait(client.submit(**body).id)  # the event stream: pushed, not polled
            service_s.append(time.perf_counter() - t)
            pushed.append(time.time() - record.timings["finished"])  # worker's finish -> client's final event
            waits.append(record.timings["started"] - record.timings["submitted"])
            runs.append(record.timings["finished"] - record.timings["started"])
            engine_s.append(record.cost.seconds)
    # Direct calls after the service ones, not interleaved: this process's torch threads keep spinning
    # for a while after each call and would slow the worker's next job.
    for _ in range(repeats + 1):
        t = time.perf_counter()
        engine.generate(body["prompt"], count, seed=123, policy="library", token=token, budget=Budget(max_candidates=8))
        direct_s.append(time.perf_counter() - t)
    service_med, direct_med = statistics.median(service_s[1:]), statistics.median(direct_s[1:])
    return {"cache_hit_ratio": round(service_med / direct_med, 3), "cache_hit_service_s": round(service_med, 4),
            "cache_hit_direct_s": round(direct_med, 4),
            "cache_hit_overhead_ms": round(1000 * (service_med - direct_med), 1),
            # where the time goes: queue wait, the job in the worker, the engine inside it
            "cache_hit_breakdown_ms": {"queue_wait": round(1000 * statistics.median(waits[1:]), 1),
                                       "job": round(1000 * statistics.median(runs[1:]), 1),
                                       "engine": round(1000 * statistics.median(engine_s[1:]), 1)},
            "finish_to_final_ms": _percentiles(pushed[1:])}


def single_flight(url: str, auth: dict, http: httpx.Client, redis_url: str, settings: Settings, result: dict) -> str:
    """20 concurrent library jobs of one new key: how many learning tasks started (into ``result``); the key."""
    ids: list[str] = []
    lock = threading.Lock()

    def submit(seed: int) -> None:
        body = {"prompt": "a photo of red crosses", "count": 9, "seed": seed, "policy": "library",
                "budget": {"max_candidates": 8}}
        job = httpx.post(f"{url}/v1/jobs", headers=auth, json=body).json()["id"]
        with lock:
            ids.append(job)

    threads = [threading.Thread(target=submit, args=(s,)) for s in range(20)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    records = []
    for job in ids:
        while (record := http.get(f"/v1/jobs/{job}").json())["status"] not in ("succeeded", "failed"):
            time.sleep(0.1)
        records.append(record)
    key = records[0]["token"]["key"]
    started = redis.Redis.from_url(redis_url).hget(Keys(settings.redis_prefix).metrics(),
                                                   f"library_tasks_started:{key}")
    result["single_flight_library_tasks"] = int(started or 0)
    return key


def learning_wait(http: httpx.Client, key: str, settings: Settings, jobs: int) -> dict:
    """Queue wait of user jobs submitted one at a time while ``key``'s library task learns."""
    waits = []
    for seed in range(jobs):
        tasks = {t["key"]: t for t in http.get("/v1/tokens/learning").json()}
        if tasks.get(key, {}).get("status") not in ("queued", "running"):
            break  # learning ended: later waits would not measure it
        job = http.post("/v1/jobs", json={"prompt": "a photo of green squares", "count": 3, "seed": seed,
                                          "policy": "resample", "budget": {"max_candidates": 8}}).json()["id"]
        while (record := http.get(f"/v1/jobs/{job}").json())["status"] not in ("succeeded", "failed"):
            time.sleep(0.05)
        waits.append(record["timings"]["started"] - record["timings"]["submitted"])
        time.sleep(0.5)  # let the next slice start
    task = {t["key"]: t for t in http.get("/v1/tokens/learning").json()}.get(key, {})
    http.delete(f"/v1/tokens/learning/{key}")
    ordered = sorted(waits)
    return {"jobs": len(waits), "slice_seconds": settings.library_slice_seconds,
            "p50_s": round(statistics.median(waits), 3) if waits else None,
            "p99_s": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 3) if waits else None,
            "max_s": round(max(waits), 3) if waits else None,
            "library_iterations_meanwhile": task.get("iterations"), "library_slices_meanwhile": task.get("slices")}


def budget_wall(url: str, secret: str, jobs: int = 16, max_seconds: float = 20.0) -> dict:
    """(finish - start) - max_seconds of jobs that cannot verify (12 crosses, detector confidence aside: the
    budget is what ends them), submitted together: how far past its budget a job runs, batched or not."""
    body = {"prompt": "a photo of black crosses", "count": 12, "policy": "resample",
            "budget": {"max_seconds": max_seconds, "max_candidates": 1024}}
    with Client(url, secret, timeout=300) as client:
        ids = [client.submit(**body, seed=30_000 + s).id for s in range(jobs)]
        records = [client.wait(i) for i in ids]
    over = [r.timings["finished"] - r.timings["started"] - max_seconds for r in records]
    return {"jobs": jobs, "max_seconds": max_seconds, "max_over_s": round(max(over), 3),
            "p50_over_s": round(statistics.median(over), 3)}


def batching(launcher: Launcher, url: str, secret: str, worker: str, jobs: int = 16, lone: int = 7) -> dict:
    """Images per second of ``jobs`` one-image jobs queued before a fresh worker starts (from the first
    job's start to the last one's finish, so model loading is not counted), and the p50 end-to-end latency
    of a job submitted alone to the idle worker."""
    body = {"prompt": "a photo of red circles", "count": 2, "policy": "resample", "budget": {"max_candidates": 32}}
    for name in [n for n in launcher.processes if n.startswith("worker-")]:
        launcher.stop(name)
    with Client(url, secret, timeout=120) as client:
        ids = [client.submit(**body, seed=s, queue_if_offline=True).id for s in range(jobs)]
        launcher.start_worker("reference", worker)
        records = [client.wait(i) for i in ids]
        span = max(r.timings["finished"] for r in records) - min(r.timings["started"] for r in records)
        alone = []
        for s in range(lone + 1):  # the first one warms up
            t = time.perf_counter()
            client.wait(client.submit(**body, seed=20_000 + s).id)
            alone.append(time.perf_counter() - t)
    return {"jobs": jobs, "images_per_s": round(sum(len(r.results) for r in records) / span, 3),
            "seconds": round(span, 3), "verified": sum(x.verified for r in records for x in r.results),
            "candidates": sum(r.cost.candidates for r in records), "lone_p50_s": round(statistics.median(alone[1:]), 4)}
