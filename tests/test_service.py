"""End to end: a private Redis server, the API (uvicorn) and a real worker process on the reference world."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tally.client import sse_events
from workers.keys import Keys
from workers.settings import Settings

from .conftest import Service, launch_service

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    env = {"TALLY_LIBRARY__MAX_ITERATIONS": "2", "TALLY_LIBRARY__SEEDS_PER_ITERATION": "2", "TALLY_LIBRARY__CALIBRATION_SEEDS": "4",
           "TALLY_LIBRARY__VALIDATION_SEEDS": "4", "TALLY_LIBRARY__VALIDATE_EVERY": "1",
           "TALLY_LIBRARY__MIN_GAIN": "-1", "TALLY_LIBRARY__MAX_GAIN_P": "1",  # tiny learning runs: admit what they learn
           "TALLY_WEBHOOK_ALLOW_PRIVATE": "1"}  # the test receiver listens on loopback
    with launch_service(tmp_path_factory.mktemp("service"), env, workers={"w1": "reference", "web1": "reference-web"}) \
            as service:
        yield service


def _import_token(service: Service, t2i, cls: str, count: int) -> str:
    from optimization.count_token import CountToken, TokenKey

    fingerprint = service.http.get("/v1/models").json()[0]["fingerprint"]
    assert fingerprint == t2i.fingerprint
    token = CountToken(TokenKey(fingerprint, cls, count), t2i.word_vectors("of"), "of", {"source": "test"})
    response = service.http.post("/v1/tokens", content=token.to_bytes(),
                                 headers={"Content-Type": "application/octet-stream"})
    assert response.status_code == 201, response.text
    return response.json()["key"]


def test_submitted_job_succeeds_with_counted_images(service):
    job_id = service.submit(prompt="a photo of red circles", count=3, num_images=2, seed=1, policy="resample")
    record = service.wait(job_id)
    assert record["status"] == "succeeded" and record["prompt"] == "a photo of 3 red circles"
    assert record["object"] == "circle" and record["cost"]["candidates"] >= 1
    assert len(record["results"]) == 2
    for result in record["results"]:
        assert result["detected_count"] == len(result["boxes"]) and isinstance(result["verified"], bool)
        assert not result["verified"] or result["detected_count"] == 3
        kinds = [d["kind"] for d in result["detections"]]  # every detection verification looked at, by kind
        assert kinds.count("confident") == result["confident"] == result["detected_count"]
        assert (kinds.count("ambiguous"), kinds.count("unclear"), kinds.count("other_class")) == (
            result["ambiguous"], result["unclear"], result["other_class"])
        png = service.http.get(result["url"])  # a path (no public_url): resolved against the service's URL
        assert png.status_code == 200 and png.headers["content-type"] == "image/png" and png.content[:4] == b"\x89PNG"
        assert len(service.http.get(result["url"], params={"boxes": "true"}).content) > len(png.content)
        name = f'{job_id}-{result["index"]}.png'  # the name `tally submit` saves it under
        assert png.headers["content-disposition"] == f'inline; filename="{name}"'
        assert "immutable" in png.headers["cache-control"] and "private" in png.headers["cache-control"]
        again = service.http.get(result["url"], headers={"If-None-Match": png.headers["etag"]})
        assert again.status_code == 304 and again.content == b""
        boxed = service.http.get(result["url"], params={"boxes": "true"}, headers={"If-None-Match": png.headers["etag"]})
        assert boxed.status_code == 200 and boxed.headers["etag"] != png.headers["etag"]  # other bytes, other tag
        def size(**params) -> tuple[int, int]:
            return Image.open(io.BytesIO(service.http.get(result["url"], params=params).content)).size

        native = size()
        assert size(boxes="true") == (4 * native[0], 4 * native[1])  # readable labels by default
        assert size(boxes="true", scale=1) == native and size(scale=2) == (2 * native[0], 2 * native[1])


@pytest.mark.parametrize("model", ["reference", "reference-web"])
def test_library_miss_schedules_learning_and_the_next_job_uses_the_token(service, model):
    first = service.wait(service.submit(prompt="a photo of green circles", count=3, seed=2, policy="library",
                                        model=model))
    assert first["token"]["library_hit"] is False and first["token"]["learning_scheduled"] is True
    key = first["token"]["key"]
    deadline = time.monotonic() + 180
    while service.http.get(f"/v1/tokens/{key}").status_code != 200:
        assert time.monotonic() < deadline, "the library task did not store its token"
        time.sleep(0.5)
    learned = service.http.get(f"/v1/tokens/{key}").json()["metadata"]
    assert learned["calibration"]["stated"] in [*range(1, 13), "many"] and learned["kept"] in ("calibration", "token")
    second = service.wait(service.submit(prompt="a photo of blue circles", count=3, seed=3, policy="library",
                                         model=model))
    assert second["token"] == {"key": key, "library_hit": True, "learning_scheduled": False}
    assert second["cost"]["iterations"] == 0  # a library hit costs no gradient step
    assert all(r["token"] in (key, f"refined:{key}") for r in second["results"])


def test_concurrent_misses_of_one_key_start_exactly_one_library_task(service):
    ids = []
    threads = [threading.Thread(target=lambda s=s: ids.append(service.submit(
        prompt="a photo of black squares", count=6, seed=s, policy="library"))) for s in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    records = [service.wait(i) for i in ids]
    key = records[0]["token"]["key"]
    assert sum(r["token"]["learning_scheduled"] for r in records) == 1
    started = service.redis.hget(Keys(service.settings.redis_prefix).metrics(), f"library_tasks_started:{key}")
    assert int(started) == 1


def test_cancel_a_queued_and_a_running_job(service):
    running = service.submit(prompt="a photo of black crosses", count=12, num_images=8, seed=4, policy="refine",
                             budget={"max_seconds": 120, "max_candidates": 8, "max_iterations": 400})
    queued = service.submit(prompt="a photo of red squares", count=2, seed=5)
    record = service.http.delete(f"/v1/jobs/{queued}").json()
    assert record["status"] == "canceled" and record["cancel_requested"] is True
    service.wait(running, timeout=60, until=("running",))
    time.sleep(2)
    asked = time.monotonic()
    answer = service.http.delete(f"/v1/jobs/{running}")
    assert answer.status_code == 200 and answer.json()["cancel_requested"] is True
    assert service.wait(running, timeout=30)["status"] == "canceled"
    assert time.monotonic() - asked < 10
    time.sleep(1)
    record = service.http.get(f"/v1/jobs/{queued}").json()
    assert record["status"] == "canceled" and "started" not in record["timings"]


def test_a_budget_bounds_each_jobs_wall_time_from_its_start_batched_or_not(service):
    # Eight images of twelve crosses take about 2-3 s alone (more when three jobs share the batches): 2 s cannot do it.
    too_much = {"prompt": "a photo of black crosses", "count": 12, "num_images": 8, "policy": "resample",
                "budget": {"max_seconds": 2, "max_candidates": 1000}}
    service.wait(service.submit(prompt="a photo of red circles", count=2, seed=1))  # the worker knows its pace
    ids = [service.submit(**too_much, seed=s) for s in range(3)]
    for record in (service.wait(i, timeout=120) for i in ids):
        started, finished = record["timings"]["started"], record["timings"]["finished"]
        assert record["deadline"] == pytest.approx(started + 2, abs=0.01) and record["budget_exhausted"] is True
        assert finished - started <= 2 + 3, record["timings"]  # the batch running at the deadline ends it
    model = next(m for m in service.http.get("/v1/models").json() if m["id"] == "reference")
    assert model["queue_depth"] == 0 and model["estimated_wait_s"] == 0.0  # measured, and nothing ahead


def test_the_worker_log_is_json_lines_only(service):
    import json

    service.wait(service.submit(prompt="a photo of red circles", count=2, seed=9, policy="resample",
                                budget={"max_candidates": 2}))
    lines = [line for line in (service.launcher.log_dir / "worker-w1.log").read_text().splitlines() if line.strip()]
    ready = [json.loads(line) for line in lines if "worker ready" in json.loads(line)["message"]]
    # its OpenMP threads sleep while they wait, so workers sharing a host's cores do not thrash (tally worker)
    assert ready and ready[0]["omp_wait_policy"] == "PASSIVE" and ready[0]["torch_threads"] >= 1
    for line in lines:
        json.loads(line)  # no progress bar, no plain print


def test_event_stream_yields_progress_in_order_and_a_final_event(service):
    job_id = service.submit(prompt="a photo of blue circles", count=4, num_images=2, seed=6, policy="resample")
    events = []
    with httpx.stream("GET", f"{service.url}/v1/jobs/{job_id}/events", timeout=120) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        events = list(sse_events(stream))
    names = [n for n, _ in events]
    assert names[-1] == "final" and names.count("final") == 1 and "progress" in names
    progress = [d for n, d in events if n == "progress"]
    assert progress[0]["status"] == "queued"
    assert any(p.get("stage") == "sampling" for p in progress)
    times = [p["time"] for p in progress]
    assert times == sorted(times)
    candidates = [p["progress"]["candidates"] for p in progress if "progress" in p]
    assert candidates == sorted(candidates)
    assert events[-1][1]["status"] == "succeeded" and events[-1][1]["id"] == job_id


def test_imported_token_is_used_without_optimization(service, t2i):
    key = _import_token(service, t2i, "circle", 4)
    record = service.wait(service.submit(prompt="a photo of red circles", count=4, seed=7, policy="library"))
    assert record["token"] == {"key": key, "library_hit": True, "learning_scheduled": False}
    assert record["cost"]["iterations"] == 0


def test_flushall_and_worker_restart_keep_learned_tokens(service, t2i):
    key = _import_token(service, t2i, "cross", 2)
    service.redis.flushall()
    service.restart_worker()
    assert service.http.get(f"/v1/tokens/{key}").status_code == 200
    record = service.wait(service.submit(prompt="a photo of green crosses", count=2, seed=8, policy="library"))
    assert record["token"]["library_hit"] is True


def test_idempotency_key_returns_the_same_job(service):
    body = {"prompt": "a photo of red squares", "count": 3, "policy": "resample"}
    a = service.http.post("/v1/jobs", json=body, headers={"Idempotency-Key": "abc-1"})
    b = service.http.post("/v1/jobs", json=body, headers={"Idempotency-Key": "abc-1"})
    assert a.status_code == b.status_code == 202 and a.json()["id"] == b.json()["id"]
    c = service.http.post("/v1/jobs", json={**body, "count": 4}, headers={"Idempotency-Key": "abc-1"})
    assert c.status_code == 409 and c.json()["code"] == "idempotency_conflict"
    service.wait(a.json()["id"])


def test_readiness_with_a_live_worker(service):
    assert service.http.get("/readyz").status_code == 200


def test_models_and_metrics_describe_the_deployment(service):
    models = service.http.get("/v1/models").json()
    assert models[0]["id"] == "reference" and models[0]["live_workers"] == ["w1"]
    assert models[0]["classes"] == ["circle", "square", "triangle", "cross"]
    text = service.http.get("/metrics").text
    assert "tally_jobs_submitted_total" in text and 'tally_queue_depth{model="reference",queue="user"}' in text


def test_compose_file_names_existing_commands_and_settings():
    import yaml

    from tally.cli import app

    compose = yaml.safe_load((Path(__file__).parents[1] / "docker" / "compose.yaml").read_text())
    assert {"redis", "api", "worker"} <= set(compose["services"])
    assert "--appendonly" in compose["services"]["redis"]["command"]
    commands = {c.name or c.callback.__name__ for c in app.registered_commands}
    assert compose["services"]["worker"]["command"][:2] == ["tally", "worker"] and "worker" in commands
    api = compose["services"]["api"]["command"]
    module, attr = api[api.index("--factory") + 1].split(":")
    assert callable(getattr(__import__(module, fromlist=[attr]), attr))
    env = compose["services"]["worker"]["environment"]
    fields = set(Settings.model_fields)
    for name, value in env.items():
        if name.startswith("TALLY_"):
            assert name[6:].lower() in fields, name
    parsed = Settings(**{k[6:].lower(): v for k, v in env.items() if k.startswith("TALLY_") and k != "TALLY_MODELS"},
                      models=__import__("json").loads(env["TALLY_MODELS"]))
    assert parsed.model("sdxl-turbo").device == "cuda"
    assert compose["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert parsed.auth == "required" and str(parsed.admin_key_file).startswith("/run/secrets/")
    assert "tally_admin_key" in compose["services"]["api"]["secrets"] and "secrets" in compose


# --- webhooks ------------------------------------------------------------------------------------------

@pytest.fixture
def receiver(tmp_path):
    """Start a real webhook receiver process: ``receiver(fail_first)`` -> (url, its log of requests)."""
    import subprocess
    import sys

    from .conftest import free_port

    started = []

    def start(fail_first: int = 0):
        port, log = free_port(), tmp_path / f"received-{len(started)}.jsonl"
        log.touch()
        started.append(subprocess.Popen([sys.executable, str(Path(__file__).with_name("webhook_receiver.py")),
                                         str(port), str(log), str(fail_first)]))
        deadline = time.monotonic() + 10
        while True:
            try:
                httpx.post(f"http://127.0.0.1:{port}/probe", content=b"{}", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the receiver did not start"
                time.sleep(0.05)
        return f"http://127.0.0.1:{port}/hooks/tally", log

    yield start
    for process in started:
        process.kill()


def _received(log, until, timeout: float = 60) -> list[dict]:
    import json

    deadline = time.monotonic() + timeout
    while True:
        entries = [json.loads(line) for line in log.read_text().splitlines()]
        if until(entries) or time.monotonic() > deadline:
            return entries
        time.sleep(0.1)


def test_a_webhook_gets_signed_start_progress_and_completed_deliveries(service, receiver):
    import json

    from standardwebhooks.webhooks import Webhook

    url, log = receiver()
    job_id = service.submit(prompt="a photo of red circles", count=2, seed=1, policy="resample", webhook=url,
                            webhook_events_filter=["start", "progress", "completed"])
    record = service.wait(job_id)
    assert record["webhook"] == url and record["webhook_events_filter"] == ["start", "progress", "completed"]
    entries = _received(log, lambda e: any(json.loads(x["body"])["type"] == "job.completed" for x in e))
    verify = Webhook(service.http.get("/v1/me").json()["webhook_secret"])  # the reference implementation
    # Dispatchers in several workers deliver in parallel, so arrival order is not event order: the timestamp is.
    bodies = sorted((verify.verify(e["body"], e["headers"]) for e in entries), key=lambda b: b["timestamp"])
    types = [b["type"] for b in bodies]
    assert types[0] == "job.start" and types[-1] == "job.completed" and types.count("job.completed") == 1
    assert "job.progress" in types
    assert bodies[-1]["job"]["id"] == job_id and bodies[-1]["job"]["status"] == "succeeded"
    assert len(bodies[-1]["job"]["results"]) == 1
    assert len({e["headers"]["webhook-id"] for e in entries}) == len(entries)  # one id per event


def test_a_failed_delivery_is_retried_under_the_same_id_until_it_is_taken(service, receiver):
    import json

    url, log = receiver(fail_first=2)
    job_id = service.submit(prompt="a photo of blue squares", count=1, seed=2, policy="resample", webhook=url,
                            webhook_events_filter=["completed"])
    service.wait(job_id)
    entries = _received(log, lambda e: any(x["status"] == 200 for x in e), timeout=30)
    assert [e["status"] for e in entries] == [503, 503, 200]  # backoff 1 s, then 2 s
    assert len({e["headers"]["webhook-id"] for e in entries}) == 1
    assert json.loads(entries[-1]["body"])["job"]["id"] == job_id


def test_the_service_bench_measures_budget_overruns_and_webhook_deliveries(service):
    from tally.benchmarks.service.jobs import budget_wall
    from tally.benchmarks.service.webhooks import webhook_phase

    wall = budget_wall(service.url, "", jobs=2, max_seconds=3)
    assert wall["jobs"] == 2 and -3 < wall["p50_over_s"] <= wall["max_over_s"]  # the bound: test_engine's deadline test
    hooks = webhook_phase(service.url, "", jobs=2)
    assert hooks["delivered"] == 2 and hooks["duplicates"] == 0 and hooks["attempts"] > 2  # 503s were retried
    assert 0 < hooks["p50_ms"] < 2000
