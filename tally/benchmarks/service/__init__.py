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
import tempfile
from pathlib import Path

import httpx
import redis

from workers.settings import Settings
from tally.launcher import Launcher
from workers.auth import KeyStore

from ..common import free_port
from .jobs import batching, budget_wall, learning_wait, library_hit, single_flight
from .load import load_phase
from .webhooks import webhook_phase


def _environment(root: Path, redis_url: str, reference) -> dict:
    """The private service's settings: keys required as deployed, library learning at its defaults (phase 4
    waits behind it), a second model "load-only" that no worker serves (phase 2), webhooks to loopback allowed
    (phase 6's receiver)."""
    models = [reference.model_dump(mode="json"), {**reference.model_dump(mode="json"), "id": "load-only"}]
    return {"TALLY_REDIS_URL": redis_url, "TALLY_RUNTIME_DIR": str(root), "TALLY_TOKEN_DIR": str(root / "tokens"),
            "TALLY_MODELS": json.dumps(models), "TALLY_AUTH": "required", "TALLY_WEBHOOK_ALLOW_PRIVATE": "1"}


def run(repeats: int = 15, load_seconds: float = 5.0, concurrency: int = 32, api_workers: int = 2,
        learning_jobs: int = 12, progress=None) -> dict:
    step = progress or (lambda name: None)
    root = Path(tempfile.mkdtemp(prefix="tally-bench-service-"))
    redis_url = f"redis://127.0.0.1:{free_port()}/0"
    reference = Settings().model("reference")
    settings = Settings(redis_url=redis_url, runtime_dir=root, token_dir=root / "tokens")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    result: dict = {}
    with Launcher(settings, env=_environment(root, redis_url, reference), log_dir=root / "logs") as launcher:
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
        result.update(library_hit(url, secret, http, reference, repeats))

        # 2. submissions and status reads under load (API + Redis), the worker idle, then busy
        step(f"load (wrk, {concurrency} connections, {load_seconds:g} s a run): submit, status; again, worker busy")
        result.update(load_phase(url, secret, http, settings, root, concurrency, load_seconds), api_workers=api_workers)

        # 3. single flight: 20 concurrent jobs of one new key
        step("single flight: 20 concurrent jobs of a new key")
        key = single_flight(url, auth, http, redis_url, settings, result)

        # 4. user jobs while that key's library task is learning (in slices, behind user jobs)
        step("user-job queue wait while a library task learns")
        result["learning_wait"] = learning_wait(http, key, settings, learning_jobs)

        # 5. a budget bounds each job's wall time from its start: 16 hopeless jobs submitted together
        step("budget wall time: 16 jobs of max_seconds 20 submitted together")
        result["budget_wall"] = budget_wall(url, secret)

        # 6. webhooks: finish -> signed delivery; then with the receiver down for 5 s
        step("webhooks: delivery latency, then a receiver down for 5 s")
        result["webhook"] = webhook_phase(url, secret)

        # 7. cross-job batching: 16 one-image jobs queued while no worker runs, then a lone job at a time;
        # with batching on (the default batch_size), then off (batch_size 1)
        step("cross-job batching: on, then off")
        on = batching(launcher, url, secret, "bench-batched")
        launcher.env["TALLY_BATCH_SIZE"] = "1"
        off = batching(launcher, url, secret, "bench-unbatched")
        result.update(batching_speedup=round(on["images_per_s"] / off["images_per_s"], 3),
                      lone_job_p50_ratio=round(on["lone_p50_s"] / off["lone_p50_s"], 3),
                      batching={"on": on, "off": off})
        http.close()
    return result
