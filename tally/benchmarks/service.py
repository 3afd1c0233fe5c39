"""``tally bench service``: the service's overhead and throughput, measured against itself in one run.

It starts a private Redis, the API and one worker (and cleans up), then measures
- ``cache_hit_ratio``: median end-to-end latency of a library-hit job through API + queue + worker, followed
  by its event stream as a client does, divided by a direct ``CountEngine`` call doing the same work (same
  prompt, seed, token, budget) in this process; ``finish_to_final_ms``: from the worker's finish to the
  client's final event (p50, p99);
- ``submit_rps``, ``status_p50_ms`` and ``status_p99_ms``: wrk (a compiled load generator, ``wrk``) at 32
  connections for ``load_seconds`` each, with the worker idle: submissions to a model queue that no worker
  serves (the API and Redis alone), then reads of 100 of those jobs round robin; ``status_p50_busy_ms``,
  ``status_p99_busy_ms`` and ``submit_rps_busy``: the same while the worker computes a burst of real jobs
  (``worker_busy_fraction``: how much of that time it did);
- ``single_flight_library_tasks``: library tasks started by 20 concurrent jobs of one new key;
- ``learning_wait``: the queue wait of user jobs submitted while that key's library task learns (in slices
  of ``library_slice_seconds``, calibration included, behind user jobs), p50 and p99;
- ``budget_wall``: among 16 jobs that cannot verify, submitted together with ``max_seconds`` 20, how far each
  ran past its budget from its own start (``max_over_s``, ``p50_over_s``);
- ``webhook``: ``p50_ms`` from the worker's finish to a receiver holding the signed ``completed`` delivery;
  then 8 jobs while the receiver answers 503 for 5 s: ``delivered`` (jobs whose event it took) and
  ``duplicates`` (an event id taken twice);
- ``batching_speedup``: images per second of 16 queued one-image jobs with cross-job batching on, divided by
  the same with it off (``batch_size`` 1); ``lone_job_p50_ratio``: a lone job's p50 latency, on over off.
"""

from __future__ import annotations

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

from tally.benchmarks import wrk
from tally.client import Client
from tally.launcher import Launcher
from workers.auth import KeyStore
from workers.keys import Keys
from workers.queue import generation_queue


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


LOAD_BODY = {"prompt": "a photo of red circles", "object": "circle", "count": 3, "model": "load-only",
             "queue_if_offline": True}
BUSY_BODY = {"prompt": "a photo of green squares", "count": 9, "num_images": 8, "policy": "resample",
             "budget": {"max_candidates": 64, "max_seconds": 30}}


def _load_phase(url: str, secret: str, http: httpx.Client, settings: Settings, folder: Path, connections: int,
                seconds: float, busy_jobs: int = 16) -> dict:
    """wrk's submit and status loads with the worker idle; then, while the worker computes a burst of real
    jobs (canceled after), the status load and the submit load again."""
    time.sleep(1)  # this process's torch threads wind down after the direct calls of phase 1
    submit = wrk.run(url, wrk.submit_script(LOAD_BODY), [secret, "0"], folder, connections, seconds)
    job_ids = generation_queue(redis.Redis.from_url(settings.redis_url), settings, "load-only").get_job_ids(0, 99)
    (folder / "job-ids").write_text("\n".join(job_ids) + "\n")
    status_args = [secret, str(folder / "job-ids")]
    status = wrk.run(url, wrk.status_script(), status_args, folder, connections, seconds)

    burst = [http.post("/v1/jobs", json={**BUSY_BODY, "seed": s}).json()["id"] for s in range(busy_jobs)]
    deadline = time.monotonic() + 120
    while not any(http.get(f"/v1/jobs/{j}").json()["status"] == "running" for j in burst[:2]):
        if time.monotonic() > deadline:
            raise RuntimeError("the worker did not start the burst of jobs within 120 s")
        time.sleep(0.1)
    start = time.time()
    status_busy = wrk.run(url, wrk.status_script(), status_args, folder, connections, seconds)
    submit_busy = wrk.run(url, wrk.submit_script(LOAD_BODY), [secret, "1000000000"], folder, connections, seconds)
    end = time.time()
    for job in burst:  # the next phases start with an idle worker
        http.delete(f"/v1/jobs/{job}")
    timings = []
    for job in burst:
        while (record := http.get(f"/v1/jobs/{job}").json())["status"] in ("queued", "running"):
            time.sleep(0.1)
        timings.append(record["timings"])

    runs = {"submit": submit, "status": status, "status_busy": status_busy, "submit_busy": submit_busy}
    failed = {name: load.errors for name, load in runs.items() if load.errors}
    if failed:
        raise RuntimeError(f"wrk saw error responses or socket errors: {failed}")
    return {"submit_rps": submit.rps, "submit_p99_ms": submit.p99_ms, "status_rps": status.rps,
            "status_p50_ms": status.p50_ms, "status_p99_ms": status.p99_ms,
            "status_p50_busy_ms": status_busy.p50_ms, "status_p99_busy_ms": status_busy.p99_ms,
            "submit_rps_busy": submit_busy.rps, "worker_busy_fraction": _busy_fraction(timings, start, end),
            "concurrency": connections,
            "load": {"generator": "wrk", "threads": 1, "seconds": seconds,
                     "runs": {name: load.to_dict() for name, load in runs.items()}}}


def _busy_fraction(timings: list[dict], start: float, end: float) -> float:
    """How much of [start, end] some job was running (from its start to its finish)."""
    spans = sorted((max(t["started"], start), min(t.get("finished", end), end)) for t in timings if t.get("started"))
    covered, reach = 0.0, start
    for begin, finish in spans:
        if finish > reach:
            covered += finish - max(begin, reach)
            reach = finish
    return round(covered / (end - start), 3)


def _percentiles(seconds: list[float]) -> dict:
    """p50 and p99 in milliseconds (p99: the largest below the 99th percentile rank, the max for few samples)."""
    ordered = sorted(seconds)
    return {"p50": round(1000 * statistics.median(ordered), 1),
            "p99": round(1000 * ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 1), "n": len(ordered)}


def run(repeats: int = 15, load_seconds: float = 5.0, concurrency: int = 32, api_workers: int = 2,
        learning_jobs: int = 12, progress=None) -> dict:
    step = progress or (lambda name: None)
    root = Path(tempfile.mkdtemp(prefix="tally-bench-service-"))
    redis_url = f"redis://127.0.0.1:{_port()}/0"
    reference = Settings().model("reference")
    models = [reference.model_dump(mode="json"), {**reference.model_dump(mode="json"), "id": "load-only"}]  # "load-only": no worker
    env = {"TALLY_REDIS_URL": redis_url, "TALLY_RUNTIME_DIR": str(root), "TALLY_TOKEN_DIR": str(root / "tokens"),
           "TALLY_MODELS": json.dumps(models), "TALLY_AUTH": "required",  # as deployed; library learning at its
           "TALLY_WEBHOOK_ALLOW_PRIVATE": "1"}  # phase 7's receiver listens on loopback
    # defaults: phase 4 waits behind it
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
        # One admin key for every request (keys are checked as in a deployment), with no rate limit in the way.
        secret, _ = KeyStore(redis.Redis.from_url(redis_url), settings).create(
            "bench", "admin", rate_limit="1000000/second", max_active_jobs=10**9)
        auth = {"Authorization": f"Bearer {secret}"}
        http = httpx.Client(base_url=url, headers=auth, timeout=120)

        # 1. library hit through the service vs the same work done directly
        step("library-hit latency: service vs direct")
        result.update(_library_hit(url, secret, http, reference, repeats))

        # 2. submissions and status reads under load (API + Redis), the worker idle, then busy
        step(f"load (wrk, {concurrency} connections, {load_seconds:g} s a run): submit, status; again, worker busy")
        result.update(_load_phase(url, secret, http, settings, root, concurrency, load_seconds), api_workers=api_workers)

        # 3. single flight: 20 concurrent jobs of one new key
        step("single flight: 20 concurrent jobs of a new key")
        key = _single_flight(url, auth, http, redis_url, settings, result)

        # 4. user jobs while that key's library task is learning (in slices, behind user jobs)
        step("user-job queue wait while a library task learns")
        result["learning_wait"] = _learning_wait(http, key, settings, learning_jobs)

        # 5. a budget bounds each job's wall time from its start: 16 hopeless jobs submitted together
        step("budget wall time: 16 jobs of max_seconds 20 submitted together")
        result["budget_wall"] = _budget_wall(url, secret)

        # 6. webhooks: finish -> signed delivery; then with the receiver down for 5 s
        step("webhooks: delivery latency, then a receiver down for 5 s")
        result["webhook"] = _webhooks(url, secret)

        # 7. cross-job batching: 16 one-image jobs queued while no worker runs, then a lone job at a time;
        # with batching on (the default batch_size), then off (batch_size 1)
        step("cross-job batching: on, then off")
        on = _batching(launcher, url, secret, "bench-batched")
        launcher.env["TALLY_BATCH_SIZE"] = "1"
        off = _batching(launcher, url, secret, "bench-unbatched")
        result.update(batching_speedup=round(on["images_per_s"] / off["images_per_s"], 3),
                      lone_job_p50_ratio=round(on["lone_p50_s"] / off["lone_p50_s"], 3),
                      batching={"on": on, "off": off})
        http.close()
    return result


def _library_hit(url: str, secret: str, http: httpx.Client, reference, repeats: int) -> dict:
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


def _single_flight(url: str, auth: dict, http: httpx.Client, redis_url: str, settings: Settings, result: dict) -> str:
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


def _learning_wait(http: httpx.Client, key: str, settings: Settings, jobs: int) -> dict:
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


def _batching(launcher: Launcher, url: str, secret: str, worker: str, jobs: int = 16, lone: int = 7) -> dict:
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


def _budget_wall(url: str, secret: str, jobs: int = 16, max_seconds: float = 20.0) -> dict:
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


class _Receiver:
    """A webhook receiver on loopback (its own thread): each delivery's id, status answered and arrival time."""

    def __init__(self):
        import http.server

        self.deliveries: list[tuple[str, int, float, dict]] = []
        self.up = True
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                status = 200 if receiver.up else 503
                receiver.deliveries.append((self.headers["webhook-id"], status, time.time(), json.loads(body)))
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *_):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def _webhooks(url: str, secret: str, jobs: int = 8) -> dict:
    """p50 from the worker's finish to the receiver holding the signed ``completed`` delivery, one job at a
    time; then ``jobs`` jobs while the receiver answers 503 for 5 s: each event taken exactly once."""
    receiver = _Receiver()
    body = {"prompt": "a photo of red circles", "count": 2, "policy": "resample", "budget": {"max_candidates": 8},
            "webhook": receiver.url, "webhook_events": ["completed"]}
    try:
        with Client(url, secret, timeout=120) as client:
            latency = []
            for s in range(jobs + 1):  # the first warms up
                record = client.wait(client.submit(**body, seed=40_000 + s).id)
                deadline = time.monotonic() + 30
                while not any(d[3]["job"]["id"] == record.id for d in receiver.deliveries):
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.002)
                arrived = [d[2] for d in receiver.deliveries if d[3]["job"]["id"] == record.id]
                if arrived and s:
                    latency.append(arrived[0] - record.timings["finished"])
            receiver.deliveries.clear()
            receiver.up = False
            down_since = time.monotonic()
            ids = [client.submit(**body, seed=50_000 + s).id for s in range(jobs)]
            for i in ids:
                client.wait(i)
            time.sleep(max(0.0, 5 - (time.monotonic() - down_since)))
            receiver.up = True
            deadline = time.monotonic() + 120
            while len({d[3]["job"]["id"] for d in receiver.deliveries if d[1] == 200}) < jobs:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.1)
        taken = [d[0] for d in receiver.deliveries if d[1] == 200]
        return {"jobs": jobs, "p50_ms": round(1000 * statistics.median(latency), 1) if latency else None,
                "delivered": len({d[3]["job"]["id"] for d in receiver.deliveries if d[1] == 200}),
                "duplicates": len(taken) - len(set(taken)),
                "attempts": len(receiver.deliveries)}
    finally:
        receiver.close()
