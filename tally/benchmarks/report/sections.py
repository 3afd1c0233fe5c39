"""One builder per benchmark: the figures and tables of its section, read with care from its JSONs."""

from __future__ import annotations

import datetime
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

from ..plots import Panel
from .model import Figure, Result, Section, Table, slug, fmt

def modified(path: Path) -> str:
    return datetime.datetime.fromtimestamp(path.stat().st_mtime).strftime("%Y-%m-%d %H:%M")


def _dict(value) -> dict:
    return value if isinstance(value, dict) else {}


def _get(data, *keys):
    """``data[k1][k2]...``, or None where a level is missing."""
    for key in keys:
        data = data.get(key) if isinstance(data, dict) else None
    return data


def _counts(per_count: dict) -> list[str]:
    return sorted((c for c in per_count if str(c).isdigit()), key=int)


def _series_name(*parts: str) -> str:
    return " · ".join(p for p in parts if p) or "result"


def _per_count_rows(label: str, data: dict, extra: tuple[str, ...] = ("overall",)) -> list[list]:
    """model | count | exact | MAE | mean detected | n, each count and then the summary rows."""
    per_count = _dict(data.get("per_count"))
    rows = [[label, int(c), *(_get(per_count, c, k) for k in ("exact", "mae", "mean_detected", "n"))]
            for c in _counts(per_count)]
    names = {"overall": "all", "degraded": "all, degraded"}
    rows += [[label, names.get(key, key), *(_get(data, key, k) for k in ("exact", "mae", "mean_detected", "n"))]
             for key in extra if isinstance(data.get(key), dict)]
    return rows


def _detector(section: Section, results: list[Result], out: Path) -> None:
    exact = {_series_name(r.label, "clean"): {c: _get(r.data, "per_count", c, "exact")
                                               for c in _counts(_dict(r.data.get("per_count")))} for r in results}
    rows = [row for r in results for row in _per_count_rows(r.label, r.data, ("overall", "degraded"))]
    table = Table(["model", "count", "exact", "MAE", "mean detected", "n"], rows)
    section.figure(out, "detector-exact-by-count.png", "Exact count of the detector by the number of objects in the "
                   "scene (fresh clean renders); the table adds the blurred and noised copies.",
                   [Panel("exact count by objects in the scene", "exact-count rate", exact, xlabel="objects",
                          ylim=(0, 1.05))], "detector", table)


def _base(section: Section, results: list[Result], out: Path) -> None:
    exact, detected, requested = {}, {}, {}
    for r in results:
        per_count = _dict(r.data.get("per_count"))
        exact[_series_name(r.label)] = {c: _get(per_count, c, "exact") for c in _counts(per_count)}
        detected[_series_name(r.label)] = {c: _get(per_count, c, "mean_detected") for c in _counts(per_count)}
        requested.update({c: float(c) for c in _counts(per_count)})
    table = Table(["model", "count", "exact", "MAE", "mean detected", "n"],
                  [row for r in results for row in _per_count_rows(r.label, r.data)])
    section.figure(out, "base-exact-by-count.png", "Exact-count rate and mean detected count of the base pipeline "
                   "(no count token) by requested count, per model.",
                   [Panel("exact count by requested count", "exact-count rate", exact, xlabel="requested count",
                          ylim=(0, 1.05)),
                    Panel("mean detected count", "detected count", {**detected, "requested": requested},
                          xlabel="requested count")], "base pipeline", table)
    section.tables.append(Table(
        ["model", "exact", "MAE", "verified 6–10", "± one standard error", "worst verified cell 1–10", "worst cell",
         "cross-check exact 6–10", "class present", "detector agrees with cross-check", "one image s",
         "batched image s", "bench images / s", "steps", "guidance", "guidance rescale"],
        [[r.label, _get(r.data, "overall", "exact"), _get(r.data, "overall", "mae"),
          _get(r.data, "targets", "verified_6_10"), _get(r.data, "targets", "verified_6_10_standard_error"),
          _get(r.data, "targets", "min_verified_cell_1_10"), _get(r.data, "targets", "min_verified_cell"),
          _get(r.data, "targets", "crosscheck_exact_6_10"),
          r.data.get("class_presence"),
          r.data.get("detector_vs_crosscheck_agreement"), _get(r.data, "speed", "single_image_s"),
          _get(r.data, "speed", "batched_image_s"), _get(r.data, "speed", "bench_images_per_s"),
          _get(r.data, "sampler", "num_inference_steps"), _guidance(r.data.get("sampler") or {}),
          _get(r.data, "sampler", "guidance_rescale")]
         for r in results], "Overall, per model"))


def _guidance(sampler: dict):
    """The guidance scale, or each step's where the model has a schedule."""
    schedule = sampler.get("guidance_schedule")
    return " / ".join(f"{g:g}" for g in schedule) if schedule else sampler.get("guidance_scale")


def _verifiers(r: Result) -> Iterator[tuple[str, dict]]:
    """(verifier, its part of an engine result): the configured verifier, and the detector alone if run."""
    yield "configured", r.data
    if isinstance(r.data.get("detector_only"), dict):
        yield "detector only", r.data["detector_only"]


def _engine(section: Section, results: list[Result], out: Path) -> None:
    by_count: dict[str, dict[str, dict]] = {"configured": {}, "detector only": {}}
    verified, false_verified, seconds = {}, {}, {}
    stats_rows, cost_rows = [], []
    for r in results:
        budget = _dict(r.data.get("budget"))
        for verifier, part in _verifiers(r):
            per_count = _dict(part.get("per_count"))
            suffix = "" if verifier == "configured" else " (detector only)"
            for policy, s in _dict(part.get("policies")).items():
                by_count[verifier][_series_name(r.label, policy)] = {c: _get(per_count, c, policy)
                                                                     for c in _counts(per_count)}
                s = _dict(s)
                verified.setdefault(_series_name(r.label) + suffix, {})[policy] = s.get("verified_rate")
                false_verified.setdefault(_series_name(r.label) + suffix, {})[policy] = s.get("false_verified_rate")
                seconds.setdefault(_series_name(r.label) + suffix, {})[policy] = s.get("seconds_per_verified")
                stats_rows.append([r.label, verifier, policy, s.get("jobs"), s.get("verified_rate"),
                                   s.get("false_verified_rate"), s.get("clean_rate"), s.get("clean_per_s")])
                cost_rows.append([r.label, verifier, policy, s.get("seconds_per_verified"), s.get("candidates"),
                                  s.get("iterations"), budget.get("max_seconds"), budget.get("max_candidates")])
        notes = [f"{r.data['jobs']} jobs" if "jobs" in r.data else "",
                 f"budget {fmt(budget.get('max_seconds'))} s and {fmt(budget.get('max_candidates'))} candidates "
                 "per job and policy" if budget else "",
                 f"{len(r.data['tokens'])} library tokens" if isinstance(r.data.get("tokens"), list) else "",
                 f"default policy by this run: {r.data['default_policy']}" if r.data.get("default_policy") else ""]
        section.notes.append(f"{r.label or 'engine'}: " + "; ".join(n for n in notes if n) + ".")

    count_columns = [(v, name) for v, series in by_count.items() for name in series]
    counts = sorted({c for series in by_count.values() for values in series.values() for c in values}, key=int)
    table = Table(["count"] + [name + ("" if v == "configured" else " (detector only)") for v, name in count_columns],
                  [[int(c)] + [by_count[v][name].get(c) for v, name in count_columns] for c in counts])
    section.figure(out, "engine-exact-by-count.png", "Share of jobs whose delivered image is exact (verified, and "
                   "the independent cross-check agrees) by requested count, per model and policy.",
                   [Panel("configured verifier", "exact images", by_count["configured"], xlabel="requested count",
                          ylim=(0, 1.05)),
                    Panel("detector-only verifier", "exact images", by_count["detector only"],
                          xlabel="requested count", ylim=(0, 1.05))], "exact images by count", table)
    section.figure(out, "engine-verified.png", "Verified within the budget per policy, and the share of verified "
                   "images the cross-check contradicts.",
                   [Panel("verified within budget", "verified rate", verified, kind="bar", ylim=(0, 1.1)),
                    Panel("falsely verified", "share of verified", false_verified, kind="bar", ylim=(0, 1.1))],
                   "verified within budget",
                   Table(["model", "verifier", "policy", "jobs", "verified", "false verified", "clean", "clean / s"],
                         stats_rows))
    section.figure(out, "engine-seconds-per-verified.png", "Seconds of work per verified image, per policy "
                   "(lower is better).",
                   [Panel("seconds per verified image", "seconds", seconds, kind="bar")], "seconds per verified image",
                   Table(["model", "verifier", "policy", "s / verified", "candidates", "iterations", "budget s",
                          "budget candidates"], cost_rows))


def _library_by_count(data: dict) -> dict[str, dict]:
    """Held-out exact and MAE per count, base against token: the per-key figures pooled over classes
    (weighted by seeds), or the per-count exact rates alone from a JSON without them."""
    pooled: dict[str, dict] = {}
    for key, figures in _dict(data.get("per_key")).items():
        count = key.rsplit("-", 1)[-1]
        if not count.isdigit():
            continue
        row = pooled.setdefault(count, {"keys": 0})
        row["keys"] += 1
        for which in ("base", "calibration", "token"):
            stats = _dict(_dict(figures).get(which))
            n = stats.get("n") or 0
            row[f"{which}_n"] = row.get(f"{which}_n", 0) + n
            for stat in ("exact", "mae"):
                if stats.get(stat) is not None:
                    row[f"{which}_{stat}_sum"] = row.get(f"{which}_{stat}_sum", 0.0) + stats[stat] * n
    out = {}
    for count, row in pooled.items():
        out[count] = {"keys": row["keys"], "seeds": row.get("base_n")}
        for which in ("base", "calibration", "token"):
            for stat in ("exact", "mae"):
                total, n = row.get(f"{which}_{stat}_sum"), row.get(f"{which}_n")
                out[count][f"{which}_{stat}"] = round(total / n, 4) if total is not None and n else None
    for count, figures in _dict(data.get("per_count")).items():
        row = out.setdefault(count, {"keys": None, "seeds": None})
        row.setdefault("base_exact", _dict(figures).get("library_base_exact"))
        row.setdefault("token_exact", _dict(figures).get("library_token_exact"))
        row["refine_success"] = _dict(figures).get("refine_success")
    return out


def _optimize(section: Section, results: list[Result], out: Path) -> None:
    exact, mae, rows = {}, {}, []
    for r in results:
        per_count = _library_by_count(r.data)
        counts = _counts(per_count)
        for which in ("base", "calibration", "token"):
            exact[_series_name(r.label, which)] = {c: per_count[c].get(f"{which}_exact") for c in counts}
            mae[_series_name(r.label, which)] = {c: per_count[c].get(f"{which}_mae") for c in counts}
        rows += [[r.label, int(c), *(per_count[c].get(k) for k in ("keys", "seeds", "base_exact", "calibration_exact",
                                                                    "token_exact", "base_mae", "token_mae",
                                                                    "refine_success"))]
                 for c in counts]
    table = Table(["model", "count", "keys", "seeds", "base exact", "calibration exact", "token exact", "base MAE",
                   "token MAE", "refine success"], rows, "Held-out seeds; a key whose token the library refused counts as the "
                  "base prompt, as its jobs run")
    section.figure(out, "optimize-library-by-count.png", "Library tokens against the base prompt on the same held-out "
                   "seeds, by count: exact-count rate and mean absolute error.",
                   [Panel("exact count, held out", "exact-count rate", exact, xlabel="count", ylim=(0, 1.05)),
                    Panel("mean absolute error, held out", "MAE", mae, xlabel="count")], "library tokens", table)
    section.tables.append(Table(
        ["model", "base exact", "token exact", "base MAE", "token MAE", "MAE reduction", "refine success",
         "refine median iterations", "near misses refined"],
        [[r.label, *(_get(r.data, "library", k) for k in ("base_exact", "token_exact", "base_mae", "token_mae",
                                                          "mae_reduction")),
          *(_get(r.data, "refine", k) for k in ("success_rate", "iterations_median", "n"))] for r in results],
        "Overall, per model"))


def _iteration(section: Section, results: list[Result], out: Path) -> None:
    series = {"iteration": {}, "floor (forward + backward)": {}}
    for r in results:
        series["iteration"][r.label or "model"] = r.data.get("iteration_s")
        series["floor (forward + backward)"][r.label or "model"] = r.data.get("floor_s")
    table = Table(["model", "iteration s", "floor s", "ratio", "peak RSS MB", "seeds per iteration", "steps"],
                  [[r.label, *(r.data.get(k) for k in ("iteration_s", "floor_s", "ratio", "peak_rss_mb",
                                                       "seeds_per_iteration", "num_inference_steps"))]
                   for r in results])
    section.figure(out, "iteration-seconds.png", "Median seconds per optimization iteration against one forward and "
                   "backward of the same generation.",
                   [Panel("seconds per iteration", "seconds", series, kind="bar")], "optimization iteration", table)


def _service(section: Section, results: list[Result], out: Path) -> None:
    def panel(title: str, ylabel: str, fields: dict[str, tuple[str, ...]]) -> Panel:
        return Panel(title, ylabel, {r.label or "service": {name: _get(r.data, *keys) for name, keys in fields.items()}
                                     for r in results}, kind="bar")

    panels = [
        panel("library hit, end to end", "seconds", {"service": ("cache_hit_service_s",),
                                                     "direct call": ("cache_hit_direct_s",)}),
        panel("library hit, where the time goes", "ms",
              {name: ("cache_hit_breakdown_ms", name) for name in ("queue_wait", "job", "engine")}),
        panel("status reads under load", "ms", {"p50": ("status_p50_ms",), "p99": ("status_p99_ms",)}),
        panel("submissions under load", "per second", {"submit": ("submit_rps",)}),
        panel("user jobs behind library learning: queue wait", "seconds",
              {name: ("learning_wait", f"{name}_s") for name in ("p50", "p99", "max")}),
    ]
    section.figure(out, "service-latency.png", "Service latency: a library hit through the service against the same "
                   "work called directly, status reads and submissions under load, and the queue wait of user "
                   "jobs while a library token learns. The table lists every figure of the run.",
                   panels, "service", _flat_table(results))


def _faults(section: Section, results: list[Result], out: Path) -> None:
    section.tables.append(_flat_table(results, "Every figure of each scenario"))


def _demo(section: Section, results: list[Result], out: Path) -> None:
    rows = [[r["model"], r["prompt"], r["count"], r["jobs"], r["jobs_verified"], r["images"], r["images_verified"],
             r["false_verified"], r["median_job_seconds"]] for result in results for r in result.data["requests"]]
    section.tables.append(Table(["model", "prompt", "count", "jobs", "jobs verified", "images", "images verified",
                                 "false verified", "median job s"], rows, "Every image is in the picture below."))


def _flat_table(results: list[Result], caption: str = "") -> Table:
    """figure | value (a column per model): every field of the results, nested ones as dotted paths, so the
    fields a benchmark gains show without a change here."""
    flat = [dict(_flatten({k: v for k, v in r.data.items() if k not in ("model", "pictures")})) for r in results]
    keys = list(dict.fromkeys(k for f in flat for k in f))
    columns = ["figure"] + [r.label or "value" for r in results]
    return Table(columns, [[key] + [f.get(key) for f in flat] for key in keys], caption)


def _flatten(data: dict, prefix: str = "") -> Iterator[tuple[str, object]]:
    for key, value in data.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        elif isinstance(value, list):
            scalars = all(not isinstance(v, (dict, list)) for v in value)
            text = ", ".join(fmt(v) for v in value) if scalars else json.dumps(value)
            yield f"{prefix}{key}", (text if len(text) <= 300 else text[:297] + "...")
        else:
            yield f"{prefix}{key}", value


def copy_pictures(section: Section, results: list[Result], folder: Path, out: Path) -> None:
    """The benchmark's own pictures (sample grids, refinement strips), copied beside the page; looked for
    where the JSON says, then in the results' folder (it may have moved)."""
    for r in results:
        for listed in r.data.get("pictures") or []:
            found = next((p for p in (Path(listed), folder / Path(listed).name) if p.is_file()), None)
            if found is None:
                section.problems.append(f"picture not found: {listed}")
                continue
            name = f"{section.name}-{slug(r.label)}-{found.name}" if r.label else f"{section.name}-{found.name}"
            shutil.copyfile(found, out / name)
            section.pictures.append(Figure(name, f"{found.name}, drawn by {section.benchmark.command}"
                                           + (f" ({r.label})" if r.label else "")))


BUILDERS = {"detector": _detector, "base": _base, "engine": _engine, "optimize": _optimize,
            "iteration": _iteration, "service": _service, "faults": _faults, "demo": _demo}
