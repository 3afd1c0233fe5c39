"""Phase 2 of ``tally bench service``: wrk's submit and status loads, with the worker idle, then busy."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import redis

from workers.settings import Settings
from tally.benchmarks import wrk
from workers.queue import generation_queue


LOAD_BODY = {"prompt": "a photo of red circles", "object": "circle", "count": 3, "model": "load-only",
             "queue_if_offline": True}


BUSY_BODY = {"prompt": "a photo of green squares", "count": 9, "num_images": 8, "policy": "resample",
             "budget": {"max_candidates": 64, "max_seconds": 30}}


def load_phase(url: str, secret: str, http: httpx.Client, settings: Settings, folder: Path, connections: int,
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
