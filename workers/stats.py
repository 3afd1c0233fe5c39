"""The figures behind ``/metrics`` that only go up: written where things happen (a worker finishing a job,
the API answering an error), read back by ``metrics`` at scrape time, so every API replica reports the same
numbers. Each writer pays one pipelined round trip; the happy path of the API pays none.

They live in the metrics hash (``Keys.metrics``) beside the older plain counters, one field per labelled
series, its labels joined by ``:`` after the figure's name (the first label may itself hold a ``:``, so
fields are split from the right). This module is the only one that writes counters (``add`` for the others'
plain ones) or builds or reads these field names.

A latency histogram is kept Prometheus-style but not cumulative: an observation adds one to the first bucket
whose bound it does not exceed (``+Inf`` past the last), and to its sum and count; ``read`` adds the buckets
up, so buckets added later still sort in.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import dataclass, field

import redis

from .keys import Keys
from .settings import Settings

# Seconds; a job on a GPU takes a few seconds to minutes, and may wait minutes behind others.
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
STAGES = ("queue", "sampling", "refining", "total")

# figure -> its labels, in field order
FIGURES = {
    "latency": ("model", "stage", "bucket"),
    "jobs_finished": ("model", "status"),
    "images_returned": ("model",),
    "images_verified": ("model",),
    "cache_hits": ("model",),
    "cache_misses": ("model",),
    "learning_scheduled": ("model",),
    "http_errors": ("status", "code"),
    "rejected": ("reason",),
}


def _field(figure: str, *labels) -> str:
    return ":".join((figure, *map(str, labels)))


def _bucket(seconds: float) -> str:
    return next((repr(b) for b in LATENCY_BUCKETS if seconds <= b), "+Inf")


def stage_durations(timings: dict, stage_ends: dict[str, float]) -> dict[str, float]:
    """Seconds spent per stage of a job, from its record's ``timings`` (submitted, started, finished) and
    the time of the last progress event of each engine stage (sampling ends with its last batch, refining
    with its last iteration). A stage the job never reached is absent."""
    out = {}
    if "started" in timings:
        out["queue"] = timings["started"] - timings["submitted"]
        if "sampling" in stage_ends:
            out["sampling"] = stage_ends["sampling"] - timings["started"]
            if "refining" in stage_ends:
                out["refining"] = stage_ends["refining"] - stage_ends["sampling"]
    if "finished" in timings:
        out["total"] = timings["finished"] - timings["submitted"]
    return {stage: max(0.0, seconds) for stage, seconds in out.items()}


def record_finished(connection: redis.Redis, settings: Settings, model: str, status: str,
                    durations: dict[str, float], results: list[dict]) -> None:
    """A job ended (succeeded, failed or canceled): its outcome, the images it returned and how many were
    verified, and its stage latencies. Queue wait counts for every job a worker ran; the engine stages and
    the total for succeeded jobs only, so that a job refused in a millisecond does not pull the quantiles."""
    metrics = Keys(settings.redis_prefix).metrics()
    with connection.pipeline() as pipe:
        pipe.hincrby(metrics, _field("jobs_finished", model, status), 1)
        if results:
            pipe.hincrby(metrics, _field("images_returned", model), len(results))
            pipe.hincrby(metrics, _field("images_verified", model), sum(bool(r.get("verified")) for r in results))
        for stage, seconds in durations.items():
            if stage != "queue" and status != "succeeded":
                continue
            pipe.hincrby(metrics, _field("latency", model, stage, _bucket(seconds)), 1)
            pipe.hincrbyfloat(metrics, _field("latency", model, stage, "sum"), seconds)
            pipe.hincrby(metrics, _field("latency", model, stage, "count"), 1)
        pipe.execute()


def seconds_per_job(connection: redis.Redis, settings: Settings, model: str) -> float | None:
    """The model's mean engine seconds per succeeded job (sampling plus refining), as measured; None before
    any. What wait estimates are made of."""
    metrics = Keys(settings.redis_prefix).metrics()
    sampling, refining, count = connection.hmget(metrics, _field("latency", model, "sampling", "sum"),
                                                 _field("latency", model, "refining", "sum"),
                                                 _field("latency", model, "sampling", "count"))
    if not count or float(count) == 0:
        return None
    return (float(sampling or 0) + float(refining or 0)) / float(count)


_PACE: dict[tuple[str, str, str], tuple[float, int, float | None]] = {}  # (url, prefix, model) -> (until, ...)
PACE_CACHE_S = 1.0


def pace(connection: redis.Redis, settings: Settings, model: str) -> tuple[int, float | None]:
    """(live workers, seconds per job) of a model, asked of Redis at most once a second per API process:
    every read of a queued job's record shows an estimate made of them."""
    from .queue import live_workers

    slot = (settings.redis_url, settings.redis_prefix, model)
    until, workers, per_job = _PACE.get(slot, (0.0, 0, None))
    if time.monotonic() >= until:
        workers, per_job = len(live_workers(connection, settings, model)), seconds_per_job(connection, settings, model)
        _PACE[slot] = (time.monotonic() + PACE_CACHE_S, workers, per_job)
    return workers, per_job


def estimated_wait(jobs_ahead: int, workers: int, per_job: float | None) -> float | None:
    """Seconds until a worker takes a job with ``jobs_ahead`` before it, on average: None when nothing was
    measured yet or no worker serves the model."""
    if per_job is None or workers == 0:
        return None
    return round(jobs_ahead * per_job / workers, 1)


def record_library_lookup(connection: redis.Redis, settings: Settings, model: str, hit: bool,
                          scheduled: bool) -> None:
    """A job looked for its library token: found or not, and whether the miss started a learning task."""
    metrics = Keys(settings.redis_prefix).metrics()
    with connection.pipeline(transaction=False) as pipe:
        pipe.hincrby(metrics, _field("cache_hits" if hit else "cache_misses", model), 1)
        if scheduled:
            pipe.hincrby(metrics, _field("learning_scheduled", model), 1)
        pipe.execute()


def add(target, settings: Settings, figure: str, amount: int | float = 1, *labels) -> None:
    """Add ``amount`` to a counter: a plain one (``jobs_submitted``, ``engine_seconds`` ...) or, with
    ``labels``, a series of ``FIGURES``. ``target`` is a connection, or a pipeline its caller executes."""
    name, metrics = _field(figure, *labels), Keys(settings.redis_prefix).metrics()
    if isinstance(amount, float):
        target.hincrbyfloat(metrics, name, amount)
    else:
        target.hincrby(metrics, name, amount)


def count_http_error(connection: redis.Redis, settings: Settings, status: int, code: str) -> None:
    connection.hincrby(Keys(settings.redis_prefix).metrics(), _field("http_errors", status, code), 1)


@dataclass
class Histogram:
    buckets: list[tuple[float, float]]  # (upper bound, cumulative count), +Inf last
    sum: float = 0.0
    count: float = 0.0


@dataclass
class Figures:
    """The metrics hash, parsed: ``series[figure][labels] = value``; latency as histograms by (model, stage);
    ``plain`` the unlabelled counters (``jobs_submitted``, ``candidates`` ...)."""

    series: dict[str, dict[tuple[str, ...], float]] = field(default_factory=lambda: defaultdict(dict))
    latency: dict[tuple[str, str], Histogram] = field(default_factory=dict)
    plain: dict[str, float] = field(default_factory=dict)

    def value(self, figure: str, *labels: str) -> float:
        return self.series[figure].get(tuple(labels), 0.0)

    def histogram(self, model: str, stage: str) -> Histogram:
        return self.latency.get((model, stage)) or Histogram(
            [(b, 0.0) for b in LATENCY_BUCKETS] + [(math.inf, 0.0)])


def read(connection: redis.Redis, settings: Settings) -> Figures:
    """One HGETALL of the metrics hash, parsed."""
    raw = connection.hgetall(Keys(settings.redis_prefix).metrics())
    figures = Figures()
    for name, value in ((k.decode(), float(v)) for k, v in raw.items()):
        figure, _, rest = name.partition(":")
        if not rest:
            figures.plain[name] = value
        elif figure in FIGURES:
            labels = tuple(rest.rsplit(":", len(FIGURES[figure]) - 1))
            if len(labels) == len(FIGURES[figure]):
                figures.series[figure][labels] = value
    observed: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    for (model, stage, bucket), value in figures.series.pop("latency", {}).items():
        observed[(model, stage)][bucket] = value
    for series, fields in observed.items():
        bounds = {float(b): n for b, n in fields.items() if b not in ("sum", "count")}
        running, buckets = 0.0, []
        for bound in sorted(set(LATENCY_BUCKETS) | set(bounds) | {math.inf}):
            running += bounds.get(bound, 0.0)
            buckets.append((bound, running))
        figures.latency[series] = Histogram(buckets, fields.get("sum", 0.0), fields.get("count", 0.0))
    return figures
