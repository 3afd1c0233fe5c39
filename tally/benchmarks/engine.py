"""``tally bench engine``: every policy on the same jobs at the same budget, verified as in production and
by the detector alone; the rule in ``optimization.policy`` names the default from the figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from optimization.config import Budget, LibraryConfig, Policy
from optimization.engine import CountEngine
from optimization.policy import choose_default
from optimization.prompts import plural
from optimization.seeds import BENCH_ENGINE
from optimization.visualize import draw_boxes, draw_kinds, grid, to_pil, to_uint8, with_legend
from workers.tokens import TokenStore

from .common import Progress

QUICK_LIBRARY = LibraryConfig(max_iterations=8, seeds_per_iteration=8, validation_seeds=16, validate_every=4)


def bench_keys(engine: CountEngine, quick: bool, counts: list[int] | None = None) -> tuple[list[str], list[int], int]:
    """(classes, counts, jobs per key) of a run; ``counts`` overrides the run's counts."""
    default = [3, 5, 7, 9] if quick else list(range(1, 11))
    return list(engine.counter.classes), counts or default, 1 if quick else 3


def bench_jobs(engine: CountEngine, counts: list[int], jobs_per_key: int) -> list[tuple[str, str, int, int]]:
    """(prompt, class, count, job seed): the same jobs for every policy; the model's prompt variants rotate."""
    jobs = []
    for ci, cls in enumerate(engine.counter.classes):
        for n in counts:
            texts = engine.library_prompts(cls, n)
            jobs += [(texts[(ci + n + j) % len(texts)], cls, n, BENCH_ENGINE + 1000 * n + j) for j in range(jobs_per_key)]
    return jobs


def library_tokens(engine: CountEngine, store: TokenStore, keys: list[tuple[str, int]], config: LibraryConfig,
                   progress: Progress | None = None, learn: bool = True) -> tuple[dict, dict]:
    """The library token of each key from the store, learning the missing ones (with ``learn``); None where the
    library's gate refused the learned token, or it lacks one (jobs of that key then sample the base prompt). Also
    the refused tokens' figures by key ("circle-8"), so a run says why a key has none."""
    from optimization.library import learn_token

    tokens, refused = {}, {}
    for i, (cls, n) in enumerate(keys):
        token = store.token_for(engine, cls, n)
        if token is None and learn:
            learned = learn_token(engine, cls, n, config)
            token = learned if store.admit(learned, config.min_gain, config.max_gain_p) else None
            if token is None:
                refused[f"{cls}-{n}"] = {k: learned.metadata.get(k) for k in ("gain", "kept", "validation")}
        tokens[(cls, n)] = token
        if progress:
            progress(i + 1, len(keys))
    return tokens, refused


def _stats(rows: list[dict]) -> dict:
    verified = [r for r in rows if r["verified"]]
    clean = sum(r["clean"] for r in rows)
    seconds = sum(r["seconds"] for r in rows)
    return {"jobs": len(rows), "median_job_seconds": round(float(np.median([r["seconds"] for r in rows])), 3) if rows else None, "verified_rate": round(len(verified) / max(len(rows), 1), 4),
            "false_verified_rate": round(sum(not r["clean"] for r in verified) / max(len(verified), 1), 4),
            "clean_rate": round(clean / max(len(rows), 1), 4),
            "clean_per_s": round(clean / max(seconds, 1e-9), 4),
            "seconds_per_verified": round(seconds / len(verified), 3) if verified else None,
            "candidates": sum(r["candidates"] for r in rows), "iterations": sum(r["iterations"] for r in rows)}


def bench_engine(engine: CountEngine, tokens: dict, jobs: list, budget: Budget, out_dir: Path,
                 policies=tuple(Policy), progress: Progress | None = None, judge=None) -> dict:
    """Every job under every policy with the same budget (refine may spend the time the others leave on
    refinement iterations). An image is clean when it is verified and the independent ``judge`` (default:
    the engine's cross-check, if any) agrees; ``false_verified_rate`` is the share of verified images that
    are not clean."""
    judge = judge or engine.crosscheck
    rows, strip, false = [], [], []
    for k, (prompt, cls, n, seed) in enumerate(jobs):
        for policy in policies:
            result = engine.generate(prompt, n, object_=cls, seed=seed, budget=budget, policy=policy,
                                     token=tokens.get((cls, n)))
            image = result.images[0]
            cross = judge(to_uint8(image.image[None])[0]) if judge else n
            rows.append({"policy": policy, "count": n, "verified": image.verified, "clean": image.verified and cross == n,
                         "seconds": result.cost["seconds"], "candidates": result.cost["candidates"],
                         "iterations": result.cost["iterations"]})
            if image.verified and cross != n and len(false) < 24:  # to look at: who is right, detector or judge?
                false.append((draw_kinds(to_pil(image.image), image.verification.kinds, scale=2),
                              f"{policy.value}: {n} {plural(cls)}, judge {cross}"))
            if policy == Policy.refine and image.iteration is not None and image.verified and len(strip) < 12:
                before = engine.t2i.generate(result.prompt, [image.seed])[0]
                strip.append((to_pil(before), to_pil(image.image), f"{n} {plural(cls)}"))
        if progress:
            progress(k + 1, len(jobs))

    result = {"budget": budget.model_dump(), "jobs": len(jobs),
              "tokens": sorted(f"{c}-{n}" for (c, n), t in tokens.items() if t is not None),
              "policies": {p.value: _stats([r for r in rows if r["policy"] == p]) for p in policies}}
    result["default_policy"] = choose_default({p: s["clean_per_s"] for p, s in result["policies"].items()},
                                              {p: s["false_verified_rate"] for p, s in result["policies"].items()}).value
    result["median_job_seconds"] = round(float(np.median([r["seconds"] for r in rows])), 3) if rows else None
    by_count = {str(n): {p.value: _stats([r for r in rows if r["policy"] == p and r["count"] == n]) for p in policies}
                for n in sorted({r["count"] for r in rows})}
    result["per_count"] = {n: {p: s["clean_rate"] for p, s in stats.items()} for n, stats in by_count.items()}
    result["per_count_stats"] = {n: {p: {k: s[k] for k in ("verified_rate", "false_verified_rate", "clean_rate",
                                                           "seconds_per_verified")} for p, s in stats.items()}
                                 for n, stats in by_count.items()}
    result["pictures"] = []
    out_dir.mkdir(parents=True, exist_ok=True)
    if strip:
        pictures = [im for before, after, _ in strip for im in (before, after)]
        labels = [f"{label} {tag}" for _, _, label in strip for tag in ("before", "after")]
        grid([draw_boxes(p, [], scale=2) for p in pictures], columns=2, labels=labels).save(out_dir / "refine_strip.png")
        result["pictures"].append(str(out_dir / "refine_strip.png"))
    if false:
        path = out_dir / f"false_verified-{engine.spec.id}.png"
        with_legend(grid([im for im, _ in false], columns=6, labels=[label for _, label in false])).save(path)
        result["pictures"].append(str(path))
    return result


def run(engine: CountEngine, store: TokenStore, quick: bool, budget: Budget, policies: tuple[Policy, ...],
        jobs_per_key: int | None, out_dir: Path, bar, counts: list[int] | None = None,
        configured: bool = True, library: bool = True, learn: bool = True) -> dict:
    """The whole benchmark: library tokens (learned if missing and ``learn``; none without ``library``), then the jobs verified
    by the detector alone (as on real models: how often is that wrong? the headline) and, with ``configured``, again as the model
    is configured (with its cross-check). ``bar(name, total)`` is a context manager yielding a progress
    callback."""
    classes, counts, per_key = bench_keys(engine, quick, counts)
    tokens, refused = {}, {}
    if library and any(p.uses_token for p in policies):
        keys = [(c, n) for c in classes for n in counts]
        with bar("library tokens", len(keys)) as update:
            tokens, refused = library_tokens(engine, store, keys, QUICK_LIBRARY if quick else LibraryConfig(), update,
                                             learn)
    jobs = bench_jobs(engine, counts, jobs_per_key or per_key)
    with bar("jobs x policies, detector-only verifier", len(jobs)) as update:
        detector_only = bench_engine(engine.detector_only(), tokens, jobs, budget, out_dir / "detector-only",
                                     policies, update, judge=engine.crosscheck)
    result = {k: detector_only[k] for k in ("budget", "jobs", "tokens", "median_job_seconds")}
    if configured:
        with bar("jobs x policies, configured verifier", len(jobs)) as update:
            result.update(bench_engine(engine, tokens, jobs, budget, out_dir, policies, update))
    result["pictures"] = detector_only["pictures"] + result.get("pictures", [])
    result["default_policy"] = detector_only["default_policy"]  # decided as production verifies: detector alone
    result["detector_only"] = {k: detector_only[k] for k in ("policies", "per_count", "per_count_stats")}
    result["verifier"] = "configured" if configured else "detector-only"
    result["library"] = library
    result["learned"] = library and learn
    result["refused_tokens"] = refused
    result["model"] = engine.spec.id
    return result


def policies_table(result: dict) -> str:
    lines = ["| policy | verified | false verified | clean | clean / s | s / verified | candidates | iterations |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    rows = [(name, s) for name, s in result.get("policies", {}).items()]
    rows += [(f"{name} (detector only)", s) for name, s in result.get("detector_only", {}).get("policies", {}).items()]
    for name, s in rows:
        lines.append(f"| {name} | {s['verified_rate']:.3f} | {s['false_verified_rate']:.3f} | {s['clean_rate']:.3f} | "
                     f"{s['clean_per_s']:.3f} | {s['seconds_per_verified']} | {s['candidates']} | {s['iterations']} |")
    return "\n".join(lines)
