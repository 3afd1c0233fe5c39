"""Prometheus metrics, read from Redis at scrape time (every API replica reports the same numbers)."""

from __future__ import annotations

import redis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from rq.registry import CanceledJobRegistry, FailedJobRegistry, FinishedJobRegistry, StartedJobRegistry

from .queue import generation_queue, keys, library_queue, live_workers
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
        raw = {k.decode(): float(v) for k, v in self.connection.hgetall(keys(self.settings).metrics()).items()}
        counters = {k: v for k, v in raw.items() if ":" not in k}
        rejections = CounterMetricFamily("tally_rejections", "Requests refused (401, 403, 429) by reason",
                                         labels=["reason"])
        for name, value in raw.items():
            if name.startswith("rejected:"):
                rejections.add_metric([name.split(":", 1)[1]], value)
        yield rejections
        for name, help_text in (("jobs_submitted", "Jobs accepted by the API"),
                                ("cache_hits", "Jobs that found a library token"),
                                ("cache_misses", "Jobs that found no library token"),
                                ("library_tasks_started", "Library-learning tasks started"),
                                ("candidates", "Candidate images sampled"),
                                ("optimization_iterations", "Token-optimization iterations"),
                                ("engine_seconds", "Seconds spent in the count engine")):
            c = CounterMetricFamily(f"tally_{name}", help_text)
            c.add_metric([], counters.get(name, 0.0))
            yield c


def prometheus_text(connection: redis.Redis, settings: Settings) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_RedisCollector(connection, settings))
    return generate_latest(registry)
