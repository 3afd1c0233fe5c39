"""The operators' view: /metrics as Prometheus reads it, moved by a real job (a real RQ worker in this process
on a private Redis) and by error responses, and the dashboard and scrape config that read it."""

from __future__ import annotations

import json
import math
import re
import uuid
from pathlib import Path

import pytest
import redis
import yaml
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from workers.runtime import runner
from workers.runtime.process import TallyWorker
from workers.keys import Keys
from workers.queue import generation_queue
from workers.settings import Settings
from workers.tokens import TokenStore

DOCKER = Path(__file__).resolve().parents[1] / "docker"
STAGES = ("queue", "sampling", "refining", "total")


def _families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def _value(families: dict, sample: str, **labels) -> float:
    family = families[re.sub(r"_(total|bucket|sum|count)$", "", sample)]
    return sum(s.value for s in family.samples if s.name == sample and labels.items() <= s.labels.items())


@pytest.fixture(scope="module")
def settings(redis_url, tmp_path_factory):
    root = tmp_path_factory.mktemp("metrics")
    return Settings(redis_url=redis_url, redis_prefix=f"m{uuid.uuid4().hex[:8]}", runtime_dir=root / "runtime",
                    token_dir=root / "tokens")


@pytest.fixture(scope="module")
def api(settings):
    from service.app import create_app

    with TestClient(create_app(settings)) as client:
        yield client


@pytest.fixture(scope="module")
def finished_job(settings, api, t2i, counter, reference_spec):
    """One refine job that misses the library, run by a real RQ worker: /metrics before it ran and after. The
    worker serves the user queue only: the learning task the miss started stays queued."""
    from optimization.counter import load_crosscheck
    from optimization.engine import CountEngine

    connection = redis.Redis.from_url(settings.redis_url)
    engine = CountEngine(t2i, counter, reference_spec, load_crosscheck(reference_spec.crosscheck), settings.refine)
    previous = runner._current
    runner._current = job_runner = runner.JobRunner(settings, reference_spec, connection, engine,
                                                    TokenStore.for_settings(settings, connection))
    response = api.post("/v1/jobs", json={"prompt": "a photo of red circles", "count": 6, "num_images": 2, "seed": 1,
                                          "policy": "refine", "budget": {"max_candidates": 2, "max_iterations": 1},
                                          "queue_if_offline": True})
    assert response.status_code == 202, response.text
    before = _families(api.get("/metrics").text)
    try:
        TallyWorker.serving(job_runner, [generation_queue(connection, settings, "reference")]).work(
            burst=True, with_scheduler=False, logging_level="WARNING")
    finally:
        runner._current = previous
    record = api.get(f"/v1/jobs/{response.json()['id']}").json()
    assert record["status"] == "succeeded" and record["cost"]["iterations"] > 0, record  # it refined: every stage
    return before, _families(api.get("/metrics").text), record


def test_a_finished_job_moves_the_stage_latency_histograms(finished_job):
    before, after, record = finished_job
    assert after["tally_job_stage_seconds"].type == "histogram"
    for stage in STAGES:
        assert _value(before, "tally_job_stage_seconds_count", model="reference", stage=stage) == 0
        assert _value(after, "tally_job_stage_seconds_count", model="reference", stage=stage) == 1
        buckets = [(float(s.labels["le"]), s.value) for s in after["tally_job_stage_seconds"].samples
                   if s.name.endswith("_bucket") and s.labels["stage"] == stage and s.labels["model"] == "reference"]
        assert [n for _, n in buckets] == sorted(n for _, n in buckets) and buckets[-1][0] == math.inf
        assert buckets[-1][1] == _value(after, "tally_job_stage_seconds_count", model="reference", stage=stage)
    timings = record["timings"]
    seconds = {stage: _value(after, "tally_job_stage_seconds_sum", model="reference", stage=stage) for stage in STAGES}
    assert seconds["queue"] == pytest.approx(timings["started"] - timings["submitted"], abs=1e-3)
    assert seconds["total"] == pytest.approx(timings["finished"] - timings["submitted"], abs=1e-3)
    assert 0 < seconds["sampling"] and seconds["queue"] + seconds["sampling"] + seconds["refining"] <= seconds["total"]


def test_a_finished_job_counts_its_outcome_its_images_and_how_many_were_verified(finished_job):
    before, after, record = finished_job
    moved = {name: _value(after, name, model="reference") - _value(before, name, model="reference")
             for name in ("tally_images_returned_total", "tally_images_verified_total", "tally_cache_hits_total",
                          "tally_cache_misses_total", "tally_library_tasks_started_total")}
    assert moved == {"tally_images_returned_total": len(record["results"]),
                     "tally_images_verified_total": sum(r["verified"] for r in record["results"]),
                     "tally_cache_hits_total": 0, "tally_cache_misses_total": 1, "tally_library_tasks_started_total": 1}
    for status, n in (("succeeded", 1), ("failed", 0), ("canceled", 0)):
        assert _value(after, "tally_jobs_finished_total", model="reference", status=status) == n
    assert after["tally_jobs_finished"].type == "counter" and after["tally_images_verified"].type == "counter"
    assert after["tally_queue_depth"].type == "gauge" and after["tally_live_workers"].type == "gauge"
    for queue, depth_before, depth_after in (("user", 1, 0), ("library", 0, 1)):  # the learning task waits
        assert _value(before, "tally_queue_depth", model="reference", queue=queue) == depth_before
        assert _value(after, "tally_queue_depth", model="reference", queue=queue) == depth_after


def test_error_responses_are_counted_by_status_and_code_and_successes_cost_no_write(api, settings):
    def errors(status: str, code: str) -> float:
        return _value(_families(api.get("/metrics").text), "tally_http_errors_total", status=status, code=code)

    not_found, invalid = errors("404", "not_found"), errors("422", "invalid_request")
    assert api.get(f"/v1/jobs/{uuid.uuid4().hex}").status_code == 404
    assert api.get("/no/such/route").status_code == 404
    assert api.post("/v1/jobs", json={"prompt": "a photo of red circles", "count": -1}).status_code == 422
    assert errors("404", "not_found") == not_found + 2 and errors("422", "invalid_request") == invalid + 1
    metrics_hash = redis.Redis.from_url(settings.redis_url).hgetall(Keys(settings.redis_prefix).metrics())
    assert api.get("/healthz").status_code == 200 and api.get("/v1/models").status_code == 200
    assert api.get("/readyz").status_code == 503  # no worker here: a probe's "not yet" is not a service error
    assert redis.Redis.from_url(settings.redis_url).hgetall(Keys(settings.redis_prefix).metrics()) == metrics_hash


def test_an_unhandled_exception_counts_as_500_internal(settings):
    from service.app import create_app

    app = create_app(settings)

    def broken() -> dict:
        raise RuntimeError("a bug")

    app.add_api_route("/broken", broken)
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/broken")
        assert response.status_code == 500 and response.json()["code"] == "internal"
        families = _families(client.get("/metrics").text)
    assert families["tally_http_errors"].type == "counter"
    assert _value(families, "tally_http_errors_total", status="500", code="internal") == 1


# ------------------------------------------------------------------------------------- dashboard, scraping
_PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset", "and", "or",
                 "unless", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: its identifiers less label matchers, range selectors,
    grouping clauses, function names, keywords and numbers."""
    expr = re.sub(r'"(?:\\.|[^"\\])*"', "", expr)  # string literals (label values)
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range and subquery selectors
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)  # their label lists
    names = set()
    for match in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr):
        following = expr[match.end():].lstrip()[:1]
        if following != "(" and match.group() not in _PROMQL_WORDS and not expr[match.start() - 1:match.start()].isdigit():
            names.add(match.group())
    return names


def _panels(dashboard: dict):
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # collapsed rows hold theirs


def test_metric_names_come_out_of_promql_whole():
    expr = ('histogram_quantile(0.95, sum by (le, stage) (rate(tally_job_stage_seconds_bucket{model=~"$model"}'
            '[$__rate_interval]))) / ignoring(code) sum without (status) (tally_x_total{code="a{b"}) offset 5m > 2e3')
    assert metric_names(expr) == {"tally_job_stage_seconds_bucket", "tally_x_total"}


def test_every_dashboard_query_reads_metrics_the_api_exports(finished_job, api):
    families = _families(api.get("/metrics").text)  # a counter no event has moved yet has no sample, only its type
    dashboard = json.loads((DOCKER / "grafana" / "dashboards" / "tally.json").read_text())
    used = set()
    for panel in _panels(dashboard):
        for target in panel.get("targets", []):
            names = metric_names(target["expr"])
            assert names, f"panel {panel['title']!r}: no metric in {target['expr']!r}"
            for name in names:
                suffix = re.search(r"_(bucket|sum|count|total)$", name)
                family = name[:suffix.start()] if suffix and name[:suffix.start()] in families else name
                assert family in families, f"panel {panel['title']!r} reads {name}, which /metrics does not export"
                expected = {"bucket": {"histogram"}, "sum": {"histogram", "summary"}, "count": {"histogram", "summary"},
                            "total": {"counter"}}.get(suffix.group(1) if family != name else "", {"gauge"})
                assert families[family].type in expected, f"{name}: {family} is a {families[family].type}"
                used.add(family)
    for variable in dashboard["templating"]["list"]:  # label_values(metric, label)
        assert re.match(r"label_values\((\w+),", variable["definition"]).group(1) in families
    assert {"tally_queue_depth", "tally_job_stage_seconds", "tally_images_verified", "tally_cache_hits",
            "tally_library_tasks_started", "tally_live_workers", "tally_http_errors", "tally_candidates",
            "tally_optimization_iterations"} <= used


def test_prometheus_scrapes_the_api_metrics_path_and_compose_runs_it_with_grafana():
    config = yaml.safe_load((DOCKER / "prometheus.yml").read_text())
    [job] = [j for j in config["scrape_configs"] if any("api:8000" in t for c in j["static_configs"] for t in c["targets"])]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    assert compose["services"]["prometheus"]["image"].startswith("prom/prometheus:")
    assert compose["services"]["grafana"]["image"].startswith("grafana/grafana:")
    for service in ("prometheus", "grafana"):
        for volume in compose["services"][service]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (DOCKER / source).exists(), f"{service} mounts {source}, which does not exist"
    providers = [yaml.safe_load(p.read_text()) for p in (DOCKER / "grafana" / "provisioning").rglob("*.yml")]
    [datasource] = [d for p in providers for d in p.get("datasources", [])]
    assert datasource["url"] == "http://prometheus:9090" and datasource["type"] == "prometheus"
    dashboard = json.loads((DOCKER / "grafana" / "dashboards" / "tally.json").read_text())
    for panel in _panels(dashboard):
        if "targets" in panel:
            assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]
