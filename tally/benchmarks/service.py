"""``tally bench service``: the service's overhead and throughput, measured against itself in one run.

It starts a private Redis, the API and one worker (and cleans up), then measures
- ``cache_hit_ratio``: median end-to-end latency of a library-hit job through API + queue + worker, divided by
  a direct ``CountEngine`` call doing the same work (same prompt, seed, token, budget) in this process;
- ``submit_rps`` and ``status_p99_ms``: a bounded load on loopback (submissions go to a model queue that no
  worker serves, so the load measures the API and Redis alone);
- ``single_flight_library_tasks``: library tasks started by 20 concurrent jobs of one new key;
- ``learning_wait``: the queue wait of user jobs submitted while that key's library task learns (in slices
  of ``library_slice_seconds``, behind user jobs), p50 and p99.
"""

from __future__ import annotations

import asyncio
import json
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx
import redis

from workers.settings import Settings

from tally.launcher import Launcher
from workers.keys import Keys
from workers.queue import generation_queue


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _load(url: str, make_request, total: int, concurrency: int) -> list[float]:
    """``total`` requests, ``concurrency`` at a time; returns each one's latency in seconds."""
    latencies: list[float] = []
    queue = asyncio.Queue()
    for i in range(total):
        queue.put_nowait(i)

    async def client_loop(client: httpx.AsyncClient):
        while not queue.empty():
            i = queue.get_nowait()
            t = time.perf_counter()
            response = await make_request(client, i)
            latencies.append(time.perf_counter() - t)
            if response.status_code >= 400:
                raise RuntimeError(f"{response.status_code}: {response.text[:200]}")

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
    return latencies


def run(repeats: int = 7, load_requests: int = 2000, concurrency: int = 32, api_workers: int = 2,
        learning_jobs: int = 12, progress=None) -> dict:
    from optimization.config import Budget
    from optimization.count_token import CountToken
    from optimization.engine import CountEngine

    step = progress or (lambda name: None)
    root = Path(tempfile.mkdtemp(prefix="tally-bench-service-"))
    redis_url = f"redis://127.0.0.1:{_port()}/0"
    reference = Settings().model("reference")
    models = [reference.model_dump(mode="json"), {**reference.model_dump(mode="json"), "id": "load-only"}]  # "load-only": no worker
    env = {"TALLY_REDIS_URL": redis_url, "TALLY_RUNTIME_DIR": str(root), "TALLY_TOKEN_DIR": str(root / "tokens"),
           "TALLY_MODELS": json.dumps(models)}  # library learning at its defaults: phase 4 waits behind it
    settings = Settings(redis_url=redis_url, runtime_dir=root, token_dir=root / "tokens")
    port = _port()
    url = f"http://127.0.0.1:{port}"
    result: dict = {}
    with Launcher(settings, env=env, log_dir=root / "logs") as launcher:
        step("start redis, api, worker")
        launcher.ensure_redis()
        launcher.start_api("127.0.0.1", port, workers=api_workers)
        launcher.start_worker("reference", "bench")
        launcher.wait_ready(url, timeout=300, models=["reference"])  # "load-only" has no worker on purpose
        http = httpx.Client(base_url=url, timeout=120)

        # 1. library hit through the service vs the same work done directly
        step("library-hit latency: service vs direct")
        engine = CountEngine.from_spec(reference)
        cls, count = "triangle", 6
        token = CountToken(engine.token_key(cls, count), engine.word_vectors("of"), "of", {"source": "bench"})
        assert http.post("/v1/tokens", content=token.to_bytes()).status_code == 201
        body = {"prompt": "a photo of blue triangles", "count": count, "seed": 123, "policy": "library",
                "budget": {"max_candidates": 8}}
        service_s, direct_s, waits, runs, engine_s = [], [], [], [], []
        for r in range(repeats + 1):
            t = time.perf_counter()
            job = http.post("/v1/jobs", json=body).json()["id"]
            while (record := http.get(f"/v1/jobs/{job}").json())["status"] not in ("succeeded", "failed"):
                time.sleep(0.02)  # a tighter poll steals the 2 cores from the worker it waits for
            service_s.append(time.perf_counter() - t)
            timings = record["timings"]
            waits.append(timings["started"] - timings["submitted"])
            runs.append(timings["finished"] - timings["started"])
            engine_s.append(record["cost"]["seconds"])
        # Direct calls after the service ones, not interleaved: this process's torch threads keep spinning
        # for a while after each call and would slow the worker's next job.
        for r in range(repeats + 1):
            t = time.perf_counter()
            engine.generate(body["prompt"], count, seed=123, policy="library", token=token,
                            budget=Budget(max_candidates=8))
            direct_s.append(time.perf_counter() - t)
        service_med, direct_med = statistics.median(service_s[1:]), statistics.median(direct_s[1:])
        result.update(cache_hit_ratio=round(service_med / direct_med, 3), cache_hit_service_s=round(service_med, 4),
                      cache_hit_direct_s=round(direct_med, 4),
                      cache_hit_overhead_ms=round(1000 * (service_med - direct_med), 1),
                      # where the time goes: queue wait, the job in the worker, the engine inside it
                      cache_hit_breakdown_ms={"queue_wait": round(1000 * statistics.median(waits[1:]), 1),
                                              "job": round(1000 * statistics.median(runs[1:]), 1),
                                              "engine": round(1000 * statistics.median(engine_s[1:]), 1)})
        del engine

        # 2. submissions and status reads under load (API + Redis only)
        step(f"load: {load_requests} submissions, then {load_requests} status reads")
        load_body = {"prompt": "a photo of red circles", "object": "circle", "count": 3, "model": "load-only",
                     "queue_if_offline": True}
        t = time.perf_counter()
        asyncio.run(_load(url, lambda c, i: c.post("/v1/jobs", json={**load_body, "seed": i}), load_requests, concurrency))
        result["submit_rps"] = round(load_requests / (time.perf_counter() - t), 1)
        job_ids = generation_queue(redis.Redis.from_url(redis_url), settings, "load-only").get_job_ids(0, 99)
        latencies = asyncio.run(_load(url, lambda c, i: c.get(f"/v1/jobs/{job_ids[i % len(job_ids)]}"),
                                      load_requests, concurrency))
        ordered = sorted(latencies)
        result["status_p50_ms"] = round(1000 * ordered[len(ordered) // 2], 2)
        result["status_p99_ms"] = round(1000 * ordered[int(len(ordered) * 0.99) - 1], 2)
        result.update(load_requests=load_requests, concurrency=concurrency, api_workers=api_workers)

        # 3. single flight: 20 concurrent jobs of one new key
        step("single flight: 20 concurrent jobs of a new key")
        ids: list[str] = []
        lock = threading.Lock()

        def submit(seed: int) -> None:
            job = httpx.post(f"{url}/v1/jobs", json={"prompt": "a photo of red crosses", "count": 9, "seed": seed,
                                                      "policy": "library", "budget": {"max_candidates": 8}}).json()["id"]
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
        started = redis.Redis.from_url(redis_url).hget(Keys(settings.redis_prefix).metrics(), f"library_tasks_started:{key}")
        result["single_flight_library_tasks"] = int(started or 0)

        # 4. user jobs while that key's library task is learning (in slices, behind user jobs)
        step("user-job queue wait while a library task learns")
        waits = []
        for seed in range(learning_jobs):
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
        result["learning_wait"] = {
            "jobs": len(waits), "slice_seconds": settings.library_slice_seconds,
            "p50_s": round(statistics.median(waits), 3) if waits else None,
            "p99_s": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 3) if waits else None,
            "max_s": round(max(waits), 3) if waits else None,
            "library_iterations_meanwhile": task.get("iterations"), "library_slices_meanwhile": task.get("slices")}
        http.close()
    return result
