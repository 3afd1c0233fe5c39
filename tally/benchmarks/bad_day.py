"""``tally bench faults``, the bad day's part: races on key changes, a full Redis, concurrent imports, a
model with no worker, a broken library token, and a long listing filtered by status. Each on private
processes on loopback (``faults._service``), bounded in time."""

from __future__ import annotations

import json
import multiprocessing
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from workers.settings import Settings

from .faults import QUICK_JOB, _service, _wait_all

OFFLINE_JOB = {**QUICK_JOB, "queue_if_offline": True}


# ------------------------------------------------------------------------------------------ keys
def _key_racer(role: str, settings_json: str, barrier, targets: list[str], rounds: int, out) -> None:
    """One process of the race: each round, past the barrier, revoke target i, create a key, or re-seed Redis
    from the file (what every API process does when it starts)."""
    import redis

    from workers.auth import KeyStore

    settings = Settings.model_validate_json(settings_json)
    store = KeyStore(redis.Redis.from_url(settings.redis_url), settings)
    created = []
    for i in range(rounds):
        barrier.wait()
        if role == "revoke":
            store.revoke(targets[i])
        elif role == "create":
            created.append(store.create(f"new-{i}")[1].id)
        else:
            store.reseed()
    out.put((role, created))


def key_race(settings: Settings, rounds: int = 40) -> dict:
    """Three processes, one round at a time after a barrier: a revoke, a create and a re-seed. Counted in
    Redis (what the API reads), in the file and in ``tally keys list``: revocations undone, keys lost."""
    import redis

    from workers.auth import KeyStore

    store = KeyStore(redis.Redis.from_url(settings.redis_url), settings)
    targets = [store.create(f"old-{i}")[1].id for i in range(rounds)]
    context = multiprocessing.get_context("spawn")
    barrier, out = context.Barrier(3), context.Queue()
    procs = [context.Process(target=_key_racer, args=(role, settings.model_dump_json(), barrier, targets, rounds, out))
             for role in ("revoke", "create", "reseed")]
    for p in procs:
        p.start()
    created = dict(out.get(timeout=300) for _ in procs)["create"]
    for p in procs:
        p.join(timeout=30)
    views = {"redis": {r.id: r for r in store._redis_records().values()},
             "file": {r.id: r for r in store._file_records().values()},
             "list": {r.id: r for r in store.list()}}
    return {"rounds": rounds,
            "revocations_lost": max(sum(not v[t].revoked for t in targets) for v in views.values()),
            "keys_lost": max(sum(c not in v or v[c].revoked for c in created) for v in views.values())}


# ------------------------------------------------------------------------------------------ Redis full
def redis_full(jobs: int = 3, full_s: float = 10.0) -> dict:
    """Redis at ``maxmemory`` (noeviction) for ``full_s`` seconds while a job runs and others wait."""
    import redis

    with _service(workers=1) as (launcher, http, settings):
        ids = [http.post("/v1/jobs", json={**QUICK_JOB, "count": 10, "seed": s,
                                           "budget": {"max_seconds": 20, "max_candidates": 1024}}).json()["id"]
               for s in range(jobs)]
        deadline = time.monotonic() + 60
        while http.get(f"/v1/jobs/{ids[0]}").json()["status"] != "running" and time.monotonic() < deadline:
            time.sleep(0.1)
        r = redis.Redis.from_url(settings.redis_url)
        r.config_set("maxmemory-policy", "noeviction")
        r.config_set("maxmemory", max(1, r.info("memory")["used_memory"] - (1 << 20)))
        try:
            time.sleep(full_s / 2)
            readyz = http.get("/readyz").json().get("code")
            read_ok = http.get(f"/v1/jobs/{ids[0]}").status_code == 200
            submit = http.post("/v1/jobs", json=QUICK_JOB).json().get("code")
            time.sleep(full_s / 2)
        finally:
            r.config_set("maxmemory", 0)
        records = _wait_all(http, ids, 300)
        return {"jobs": jobs, "full_s": full_s, "readyz_failed_while_full": readyz == "redis_full",
                "reads_while_full": read_ok, "submit_code_while_full": submit,
                "lost": sum("status" not in r for r in records.values()),
                "stranded": sum(r.get("status") not in ("succeeded", "failed", "canceled") for r in records.values()),
                "failed": sum(r.get("status") == "failed" for r in records.values()),
                "worker_exits": int(launcher.processes["worker-w0"].poll() is not None)}


# ------------------------------------------------------------------------------------------ imports
def publish_reference(settings: Settings) -> str:
    """A live worker's heartbeat for every model and the reference model's info in Redis, as workers write them
    (for the API alone); returns the reference model's fingerprint."""
    import redis

    from optimization.pipelines import TextToImage
    from optimization.reference.models import reference_model
    from workers.keys import Keys
    from workers.queue import beat

    t2i = TextToImage.from_spec(reference_model())
    connection, k = redis.Redis.from_url(settings.redis_url), Keys(settings.redis_prefix)
    for model in settings.models:  # every model looks served (/readyz 200)
        beat(connection, settings, model.id, "bench", json.dumps({"name": "bench", "host": "bench", "pid": 0}), 3600)
    connection.set(k.model_info("reference"), json.dumps({
        "id": "reference", "fingerprint": t2i.fingerprint, "classes": reference_model().classes, "max_count": 12,
        "dims": {name: enc.config.hidden_size for name, _, enc in t2i.encoders()},
        "token_norm_bounds": t2i.token_norm_bounds}))
    return t2i.fingerprint


def _token_file(fingerprint: str, obj: str, count: int, value: float = 0.05, dim: int = 128) -> bytes:
    import safetensors.numpy

    from optimization.pipelines import PLACEHOLDER

    return safetensors.numpy.save({PLACEHOLDER: np.full((1, dim), value, np.float32)}, metadata={
        "tally_format": "1", "model_fingerprint": fingerprint, "object": obj, "count": str(count),
        "init_word": "of", "metadata": json.dumps({"mode": "library"})})


def import_race(rounds: int = 5, concurrent: int = 30) -> dict:
    """``rounds`` x ``concurrent`` admin imports of different token files at once, through the API."""
    with _service(workers=0) as (_, http, settings):
        fingerprint = publish_reference(settings)
        files = [_token_file(fingerprint, obj, count) for count in range(1, 11) for obj in ("circle", "square", "cross")]
        statuses = []
        with ThreadPoolExecutor(concurrent) as pool:
            for _ in range(rounds):
                statuses += pool.map(lambda data: http.post("/v1/tokens", content=data).status_code, files[:concurrent])
        return {"requests": len(statuses), "server_errors": sum(s >= 500 for s in statuses),
                "accepted": sum(s == 201 for s in statuses)}


# ------------------------------------------------------------------------------------------ jobs end
def no_worker(timeout_s: float = 10.0) -> dict:
    """A queue_if_offline job of a model without a worker: how long until it fails with no_worker."""
    with _service(workers=0, env={"TALLY_NO_WORKER_TIMEOUT_S": str(timeout_s)}) as (_, http, _settings):
        started = time.monotonic()
        job = http.post("/v1/jobs", json=OFFLINE_JOB).json()["id"]
        record = _wait_all(http, [job], timeout_s + 60)[job]
        return {"timeout_s": timeout_s, "status": record["status"], "code": (record.get("error") or {}).get("code"),
                "job_failed_after_s": round(time.monotonic() - started, 1)}


def degenerate_token(jobs: int = 3) -> dict:
    """A library token of 3e38 in every element, put in the token directory by hand (past the import's
    checks) before the worker starts: jobs of its key must not succeed with images that are not images."""
    from optimization.pipelines import TextToImage
    from optimization.reference.models import reference_model
    from optimization.token_file import TokenKey

    fingerprint = TextToImage.from_spec(reference_model()).fingerprint
    with _service(workers=1) as (_, http, settings):
        settings.tokens_path.mkdir(parents=True, exist_ok=True)
        (settings.tokens_path / TokenKey(fingerprint, "circle", 3).filename).write_bytes(
            _token_file(fingerprint, "circle", 3, value=3e38))
        ids = [http.post("/v1/jobs", json={**QUICK_JOB, "policy": "library", "seed": s}).json()["id"]
               for s in range(jobs)]
        records = _wait_all(http, ids, 300)
        bad = 0
        for job, record in records.items():
            for result in record.get("results") or []:
                image = np.asarray(_png(http.get(f"/v1/jobs/{job}/images/{result['index']}").content), np.float32)
                bad += record["status"] == "succeeded" and float(image.std()) < 0.25  # 0..255: one flat colour
        return {"jobs": jobs, "succeeded": sum(r["status"] == "succeeded" for r in records.values()),
                "library_hits": sum(bool((r.get("token") or {}).get("library_hit")) for r in records.values()),
                "succeeded_with_degenerate_image": bad}


def _png(data: bytes):
    import io

    from PIL import Image

    return Image.open(io.BytesIO(data)).convert("RGB")


# ------------------------------------------------------------------------------------------ listing
def list_amplification(owner_jobs: int = 600, requests: int = 60) -> dict:
    """An owner with ``owner_jobs`` jobs (a tenth canceled): a page of one job filtered by status vs not."""
    with _service(workers=0, env={"TALLY_MAX_ACTIVE_JOBS": str(owner_jobs + 10)}) as (_, http, _settings):
        with ThreadPoolExecutor(8) as pool:
            ids = list(pool.map(lambda s: http.post("/v1/jobs", json={**OFFLINE_JOB, "seed": s}).json()["id"],
                                range(owner_jobs)))
            list(pool.map(lambda j: http.delete(f"/v1/jobs/{j}"), ids[::10]))

        def p50_ms(params: dict) -> float:
            times = []
            for _ in range(requests):
                t = time.perf_counter()
                assert http.get("/v1/jobs", params=params).status_code == 200
                times.append((time.perf_counter() - t) * 1000)
            return round(statistics.median(times), 2)

        unfiltered, filtered = p50_ms({"limit": 1}), p50_ms({"limit": 1, "status": "queued"})
        oldest = p50_ms({"limit": 1, "status": "canceled"})
        return {"owner_jobs": owner_jobs, "unfiltered_page_ms_p50": unfiltered, "filtered_page_ms_p50": filtered,
                "filtered_rare_page_ms_p50": oldest, "ratio": round(max(filtered, oldest) / unfiltered, 2)}


def run(step) -> dict:
    import tempfile
    from pathlib import Path

    from tally.launcher import Launcher

    from .common import free_port

    result = {}
    step("key race")
    root = Path(tempfile.mkdtemp(prefix="tally-bench-keys-"))
    settings = Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0", runtime_dir=root)
    with Launcher(settings, log_dir=root / "logs") as launcher:
        launcher.ensure_redis()
        result["key_race"] = key_race(settings)
    step("redis full")
    result["redis_full"] = redis_full()
    step("import race")
    result["import_race"] = import_race()
    step("no worker")
    result["no_worker"] = no_worker()
    step("degenerate token")
    result["degenerate_token"] = degenerate_token()
    step("list amplification")
    result["list_amplification"] = list_amplification()
    return result
