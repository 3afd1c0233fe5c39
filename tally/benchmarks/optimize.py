"""``tally bench optimize``: refinement on near-miss seeds (the paper's per-seed setting), and library
tokens against the base prompt on held-out seeds."""

from __future__ import annotations

import statistics

import numpy as np

from optimization.config import LibraryConfig
from optimization.count_token import place_token
from optimization.counter import count
from optimization.engine import CountEngine
from optimization.prompts import with_count
from optimization.seeds import LIBRARY_JUDGE
from workers.tokens import TokenStore

from .common import Progress, summarize
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
    """Held-out exact and MAE of library tokens against the base prompt, on the same seeds (never used in
    learning or validation)."""
    seeds = [LIBRARY_JUDGE + i for i in range(judge_seeds)]
    pairs_base, pairs_token, per = [], [], {}
    for k, ((cls, n), token) in enumerate(sorted(tokens.items())):
        base, tok = [], []
        prompts = engine.library_prompts(cls, n)
        per_prompt = max(1, judge_seeds // len(prompts))
        for i, prompt in enumerate(prompts):
            share = seeds[i * per_prompt:(i + 1) * per_prompt]
            base += [(n, count(engine.counter, d, cls)) for d in engine.counter.detect(engine.t2i.generate(prompt, share))]
            if token is None:  # the library refused it (no gain): jobs of this key use the base prompt
                continue
            engine.t2i.set_token(token.vectors)
            images = engine.t2i.generate(place_token(prompt, n)[0], share)
            tok += [(n, count(engine.counter, d, cls)) for d in engine.counter.detect(images)]
        tok = tok if token is not None else base
        pairs_base += base
        pairs_token += tok
        per[f"{cls}-{n}"] = {"base": summarize(base), "token": summarize(tok)}
        if progress:
            progress(k + 1, len(tokens))
    b, t = summarize(pairs_base), summarize(pairs_token)
    return {"base_exact": b["exact"], "token_exact": t["exact"], "base_mae": b["mae"], "token_mae": t["mae"],
            "mae_reduction": round(1 - t["mae"] / b["mae"], 4) if b["mae"] else None, "per_key": per}


def run(engine: CountEngine, store: TokenStore, quick: bool, bar) -> dict:
    classes, counts, per_key = bench_keys(engine, quick)
    keys = [(c, n) for c in classes for n in counts]
    with bar("library tokens", len(keys)) as update:
        tokens = library_tokens(engine, store, keys, QUICK_LIBRARY if quick else LibraryConfig(), update)
    cases = near_misses(engine, bench_jobs(engine, counts, per_key))
    with bar("refine near misses", len(cases)) as update:
        refine = bench_refine(engine, cases, max_iterations=10 if quick else 20, progress=update)
    with bar("library vs base", len(tokens)) as update:
        library = bench_library(engine, tokens, judge_seeds=16 if quick else 64, progress=update)

    def mean_over_classes(n: int, which: str) -> float:
        return round(float(np.mean([library["per_key"][f"{c}-{n}"][which]["exact"] for c in classes])), 4)

    per_count = {str(n): {"refine_success": refine["per_count"].get(str(n)),
                          "library_token_exact": mean_over_classes(n, "token"),
                          "library_base_exact": mean_over_classes(n, "base")} for n in counts}
    return {"model": engine.spec.id, "refine": {k: refine[k] for k in ("success_rate", "iterations_median", "n")},
            "library": {k: v for k, v in library.items() if k != "per_key"}, "per_count": per_count,
            "per_key": library["per_key"]}
