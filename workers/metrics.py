"""Prometheus metrics, read from Redis at scrape time (every API replica reports the same numbers): queue and
worker gauges from RQ and the heartbeats, counters and latency histograms from the metrics hash (``stats``)."""

from __future__ import annotations

import math
from collections import Counter

import redis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from rq.registry import CanceledJobRegistry, FailedJobRegistry, FinishedJobRegistry, StartedJobRegistry

from . import stats
from .queue import REDIS_TROUBLE, generation_queue, library_queue, live_workers, redis_trouble, refuses_writes
from .records import JobStatus
from .settings import Settings


class _RedisCollector:
    def __init__(self, connection: redis.Redis, settings: Settings):
        self.connection, self.settings = connection, settings

    def collect(self):
        jobs = GaugeMetricFamily("tally_jobs", "Jobs by RQ state (registries hold them for the result TTL)",
                                 labels=["model", "queue", "state"])
        depth = GaugeMetricFamily("tally_queue_depth", "Jobs waiting", labels=["model", "queue"])
        workers = GaugeMetricFamily("tally_live_workers", "Workers with a live heartbeat", labels=["model"])
        for m in self.settings.models:
            for kind, queue in (("user", generation_queue(self.connection, self.settings, m.id)),
                                ("library", library_queue(self.connection, self.settings, m.id))):
                depth.add_metric([m.id, kind], len(queue))
                jobs.add_metric([m.id, kind, JobStatus.queued], len(queue))
                for state, registry in (("started", StartedJobRegistry), ("finished", FinishedJobRegistry),
                                        ("failed", FailedJobRegistry), ("canceled", CanceledJobRegistry)):
                    jobs.add_metric([m.id, kind, state], registry(queue=queue).count)
            workers.add_metric([m.id], len(live_workers(self.connection, self.settings, m.id)))
        yield from (jobs, depth, workers)
        yield from self._figures(stats.read(self.connection, self.settings))

    def _figures(self, figures: stats.Figures):
        models = [m.id for m in self.settings.models]
        latency = HistogramMetricFamily(
            "tally_job_stage_seconds", "Seconds per stage of a job: queue (submit to start; every job a worker "
            "ran), sampling, refining (jobs that refined) and total (submit to finish) of succeeded jobs",
            labels=["model", "stage"])
        for model in models:
            for stage in stats.STAGES:
                h = figures.histogram(model, stage)
                latency.add_metric([model, stage], [(_bound(b), n) for b, n in h.buckets], h.sum)
        yield latency
        finished = CounterMetricFamily("tally_jobs_finished", "Jobs a worker finished, by outcome",
                                       labels=["model", "status"])
        for model in models:
            for status in (JobStatus.succeeded, JobStatus.failed, JobStatus.canceled):
                finished.add_metric([model, status], figures.value("jobs_finished", model, status))
        yield finished
        for figure, name, help_text in (
                ("images_returned", "tally_images_returned", "Images returned by finished jobs"),
                ("images_verified", "tally_images_verified", "Returned images the detector verified (the count is right)"),
                ("cache_hits", "tally_cache_hits", "Jobs that found a library token"),
                ("cache_misses", "tally_cache_misses", "Jobs that found no library token"),
                ("learning_scheduled", "tally_library_tasks_started", "Library-learning tasks started by a miss")):
            c = CounterMetricFamily(name, help_text, labels=["model"])
            for model in models:
                c.add_metric([model], figures.value(figure, model))
            yield c
        errors = CounterMetricFamily("tally_http_errors", "API error responses (4xx, 5xx) by status and error code",
                                     labels=["status", "code"])
        for (status, code), value in sorted(figures.series["http_errors"].items()):
            errors.add_metric([status, code], value)
        yield errors
        rejections = CounterMetricFamily("tally_rejections", "Requests refused (401, 403, 429) by reason",
                                         labels=["reason"])
        for (reason,), value in sorted(figures.series["rejected"].items()):
            rejections.add_metric([reason], value)
        yield rejections
        for name, help_text in (("jobs_submitted", "Jobs accepted by the API"),
                                ("candidates", "Candidate images sampled"),
                                ("optimization_iterations", "Token-optimization iterations"),
                                ("engine_seconds", "Seconds spent in the count engine")):
            c = CounterMetricFamily(f"tally_{name}", help_text)
            c.add_metric([], figures.plain.get(name, 0.0))
            yield c


def _bound(seconds: float) -> str:
    return "+Inf" if math.isinf(seconds) else repr(seconds)


class _ProcessCollector:
    """What this API process saw but could not write to Redis: its Redis troubles (``queue.REDIS_TROUBLE``)."""

    def __init__(self, troubles: Counter):
        self.troubles = troubles

    def collect(self):
        c = CounterMetricFamily("tally_api_redis_errors", "Requests this API process answered 503 because of "
                                "Redis, by trouble (redis_full, redis_readonly, redis_loading, redis_unavailable)",
                                labels=["trouble"])
        for trouble in REDIS_TROUBLE:
            c.add_metric([trouble], self.troubles.get(trouble, 0))
        yield c


def prometheus_text(connection: redis.Redis, settings: Settings, troubles: Counter) -> bytes:
    """The metrics; while Redis refuses writes (RQ's registries tidy themselves up when counted), this
    process's own, which then say why."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_ProcessCollector(troubles))
    registry.register(_RedisCollector(connection, settings))
    try:
        return generate_latest(registry)
    except redis.RedisError as exc:
        if not refuses_writes(exc):
            raise
        troubles[redis_trouble(exc)] += 1
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_ProcessCollector(troubles))
        return generate_latest(registry)
