"""``tally bench optimize``: refinement on near-miss seeds (the paper's per-seed setting), and library
tokens against the base prompt on held-out seeds."""

from __future__ import annotations

import statistics
from pathlib import Path

import numpy as np

from optimization.config import LibraryConfig
from optimization.count_token import place_token
from optimization.counter import count
from optimization.engine import CountEngine
from optimization.prompts import with_count
from optimization.seeds import LIBRARY_JUDGE
from workers.tokens import TokenStore

from .common import Progress, summarize
from .plots import Panel, plot_panels
from .engine import QUICK_LIBRARY, bench_jobs, bench_keys, library_tokens


def near_misses(engine: CountEngine, jobs: list, per_job: int = 1) -> list[tuple[str, str, int, int]]:
    """Seeds whose base image is off by 1..3 (the cases refinement is for), ``per_job`` per job."""
    cases = []
    for prompt, cls, n, seed in jobs:
        seeds = [seed * 7 + i for i in range(16)]
        images = engine.t2i.generate(with_count(prompt, cls, n), seeds)
        found = [s for s, d in zip(seeds, engine.counter.detect(images)) if 1 <= abs(count(engine.counter, d, cls) - n) <= 3]
        cases += [(prompt, cls, n, s) for s in found[:per_job]]
    return cases


def bench_refine(engine: CountEngine, cases: list[tuple[str, str, int, int]], max_iterations: int,
                 progress: Progress | None = None) -> dict:
    """Refinement on seeds whose base image misses: success = verified."""
    outcomes = []
    config = engine.refine_config.model_copy(update={"max_iterations": max_iterations})
    for k, (prompt, cls, n, seed) in enumerate(cases):
        token_prompt, init_word = place_token(with_count(prompt, cls, n), n)
        result = engine.refine(token_prompt, cls, n, seed, engine.word_vectors(init_word), config)
        outcomes.append({"count": n, "success": result.hit is not None,
                         "iterations": result.hit.iteration if result.hit else None})
        if progress:
            progress(k + 1, len(cases))
    its = [o["iterations"] for o in outcomes if o["success"]]
    return {"success_rate": round(float(np.mean([o["success"] for o in outcomes])), 4) if outcomes else 0.0,
            "iterations_median": statistics.median(its) if its else None, "n": len(outcomes),
            "per_count": {str(n): round(float(np.mean([o["success"] for o in outcomes if o["count"] == n])), 4)
                          for n in sorted({o["count"] for o in outcomes})}}


def bench_library(engine: CountEngine, tokens: dict, judge_seeds: int, progress: Progress | None = None) -> dict:
    """Held-out exact and MAE on the same seeds (never used in learning or validation) of, per key: the base
    prompt; the stated-number calibration alone (its prompt as written); the library token as jobs use it."""
    seeds = [LIBRARY_JUDGE + i for i in range(judge_seeds)]
    pooled: dict[str, list] = {"base": [], "calibration": [], "token": []}
    per = {}
    for k, ((cls, n), token) in enumerate(sorted(tokens.items())):
        figures: dict[str, list] = {which: [] for which in pooled}
        stated = _calibrated(token, n)
        plain_prompts = engine.library_prompts(cls, n)
        per_prompt = max(1, judge_seeds // len(plain_prompts))
        for i, prompt in enumerate(plain_prompts):
            share = seeds[i * per_prompt:(i + 1) * per_prompt]
            figures["base"] += _counted(engine, prompt, cls, n, share)
            stated_prompt = with_count(prompt, cls, stated)
            figures["calibration"] += (figures["base"][-len(share):] if stated == n
                                       else _counted(engine, stated_prompt, cls, n, share))
            if token is not None:  # else the library refused it (no gain): jobs of this key use the base prompt
                engine.t2i.set_token(token.vectors)
                figures["token"] += _counted(engine, place_token(with_count(prompt, cls, token.stated_count),
                                                                 token.stated_count)[0], cls, n, share)
        if token is None:
            figures["token"] = figures["base"]
        per[f"{cls}-{n}"] = {which: summarize(pairs) for which, pairs in figures.items()}
        per[f"{cls}-{n}"]["stated"] = stated
        per[f"{cls}-{n}"]["kept"] = (token.metadata.get("kept") if token else None)
        per[f"{cls}-{n}"]["validation"] = token.metadata.get("validation") if token else None
        for which in pooled:
            pooled[which] += figures[which]
        if progress:
            progress(k + 1, len(tokens))
    b, c, t = (summarize(pooled[w]) for w in ("base", "calibration", "token"))
    return {"base_exact": b["exact"], "calibration_exact": c["exact"], "token_exact": t["exact"],
            "base_mae": b["mae"], "calibration_mae": c["mae"], "token_mae": t["mae"],
            "mae_reduction": round(1 - t["mae"] / b["mae"], 4) if b["mae"] else None, "per_key": per}


def _counted(engine: CountEngine, prompt: str, cls: str, n: int, seeds: list[int]) -> list[tuple[int, int]]:
    return [(n, count(engine.counter, d, cls)) for d in engine.counter.detect(engine.t2i.generate(prompt, seeds))]


def _calibrated(token, n: int) -> int | str:
    """What calibration chose to state for the key (recorded in the token even when the gradient token won)."""
    if token is None:
        return n
    return token.metadata.get("calibration", {}).get("stated", token.stated_count)


def run(engine: CountEngine, store: TokenStore, quick: bool, bar, counts: list[int] | None = None,
        out_dir: Path | None = None) -> dict:
    classes, counts, per_key = bench_keys(engine, quick, counts)
    keys = [(c, n) for c in classes for n in counts]
    with bar("library tokens", len(keys)) as update:
        tokens, refused = library_tokens(engine, store, keys, QUICK_LIBRARY if quick else LibraryConfig(), update)
    cases = near_misses(engine, bench_jobs(engine, counts, per_key))
    with bar("refine near misses", len(cases)) as update:
        refine = bench_refine(engine, cases, max_iterations=10 if quick else 20, progress=update)
    with bar("library vs base", len(tokens)) as update:
        library = bench_library(engine, tokens, judge_seeds=16 if quick else 64, progress=update)

    def mean_over_classes(n: int, which: str, stat: str = "exact") -> float:
        return round(float(np.mean([library["per_key"][f"{c}-{n}"][which][stat] for c in classes])), 4)

    per_count = {str(n): {"refine_success": refine["per_count"].get(str(n)),
                          **{f"{which}_{stat}": mean_over_classes(n, which, stat)
                             for which in ("base", "calibration", "token") for stat in ("exact", "mae")},
                          "gradient_validation_exact": _mean_validation(library, classes, n, "gradient"),
                          "calibration_validation_exact": _mean_validation(library, classes, n, "calibration")}
                 for n in counts}
    result = {"model": engine.spec.id, "refine": {k: refine[k] for k in ("success_rate", "iterations_median", "n")},
              "library": {k: v for k, v in library.items() if k != "per_key"}, "per_count": per_count,
              "per_key": library["per_key"], "refused_tokens": refused}
    if out_dir is not None:
        path = out_dir / f"optimize-methods-{engine.spec.id}.png"
        plot_methods(result, path)
        result["pictures"] = [str(path)]
    return result


def plot_methods(result: dict, path: Path) -> None:
    """Exact-count rate by count of each method, on held-out seeds: one PNG."""
    per_count = result["per_count"]
    series = {label: {n: row.get(key) for n, row in per_count.items()}
              for label, key in (("base prompt", "base_exact"), ("stated-number calibration", "calibration_exact"),
                                 ("library token (kept)", "token_exact"), ("refine: near misses verified",
                                                                           "refine_success"))}
    plot_panels([Panel(f"{result['model']}: exact count by method, held-out seeds", "exact-count rate", series,
                       xlabel="count", ylim=(0, 1.05))], path, result["model"])


def _mean_validation(library: dict, classes: list[str], n: int, which: str) -> float | None:
    """Mean over classes of a validation figure learning recorded (validation seeds, not the judge's)."""
    values = [((library["per_key"][f"{c}-{n}"]["validation"] or {}).get(which) or {}).get("exact") for c in classes]
    values = [v for v in values if v is not None]
    return round(float(np.mean(values)), 4) if values else None


def per_count_table(result: dict) -> str:
    """Markdown: per count, exact and MAE of base, calibration and library token on held-out seeds."""
    cols = ("base_exact", "calibration_exact", "token_exact", "base_mae", "calibration_mae", "token_mae",
            "refine_success")
    lines = ["| count | " + " | ".join(c.replace("_", " ") for c in cols) + " |", "|---:" * (len(cols) + 1) + "|"]
    for n, row in result["per_count"].items():
        lines.append(f"| {n} | " + " | ".join("" if row.get(c) is None else f"{row[c]:.3f}" for c in cols) + " |")
    return "\n".join(lines)
