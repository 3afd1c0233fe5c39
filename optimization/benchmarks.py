"""Accuracy and speed benchmarks of the reference world (``tally bench detector | base``).

Each returns a JSON-ready dict and writes its pictures; the CLI prints the table. Seeds never overlap
with training: detector training renders from ``detector.TRAIN_SEED_BASE``/``VAL_SEED_BASE``, the
generator from ``t2i.T2I_SEED_BASE``; benchmarks use the bases below.
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .counter import YoloCounter
from .pipelines import TextToImage
from .reference.crosscheck import crosscheck_count
from .reference.scenes import CLASSES, COLOURS, PLURALS, caption, degrade, render_scene
from .visualize import draw_boxes, grid, plot_per_count, to_pil, to_uint8

BENCH_DETECTOR_SEED_BASE = 9_000_000
BENCH_BASE_SEED_BASE = 7_000_000

Progress = Callable[[int, int], None]


def summarize(pairs: list[tuple[int, int]]) -> dict:
    """Exact-count rate, mean absolute error and mean detected count of (target, detected) pairs."""
    if not pairs:
        return {"exact": 0.0, "mae": 0.0, "mean_count": 0.0, "n": 0}
    t = np.array([p[0] for p in pairs])
    d = np.array([p[1] for p in pairs])
    return {"exact": round(float((t == d).mean()), 4), "mae": round(float(np.abs(t - d).mean()), 4),
            "mean_count": round(float(d.mean()), 3), "n": len(pairs)}


def per_count(pairs: list[tuple[int, int]]) -> dict[str, dict]:
    by = defaultdict(list)
    for p in pairs:
        by[p[0]].append(p)
    return {str(k): summarize(v) for k, v in sorted(by.items())}


def _scene_tensor(images: list) -> torch.Tensor:
    return torch.from_numpy(np.stack([np.asarray(im) for im in images])).permute(0, 3, 1, 2).float() / 255


def bench_detector(counter: YoloCounter, scenes: int, progress: Progress | None = None, batch: int = 64) -> dict:
    """Exact count of the scene's class on fresh renders (counts 1..12), clean and degraded like generations."""
    clean, degraded = [], []
    for start in range(0, scenes, batch):
        seeds = range(BENCH_DETECTOR_SEED_BASE + start, BENCH_DETECTOR_SEED_BASE + min(start + batch, scenes))
        rendered = [render_scene(s) for s in seeds]
        noisy = [degrade(r.image, np.random.default_rng(r.seed)) for r in rendered]
        for target_list, images in ((clean, [r.image for r in rendered]), (degraded, noisy)):
            dets = counter.detect(_scene_tensor(images))
            target_list.extend((r.count, d.count(r.objects[0].cls)) for r, d in zip(rendered, dets))
        if progress:
            progress(min(start + batch, scenes), scenes)
    return {"overall": summarize(clean), "per_count": per_count(clean), "degraded": summarize(degraded)}


def base_prompts(counts: range) -> list[tuple[str, str, int]]:
    """(prompt, class, count) for every class x count, colours rotating so each appears evenly."""
    colours = list(COLOURS)
    return [(caption(cls, colours[(ci + n) % len(colours)], n), cls, n)
            for ci, cls in enumerate(CLASSES) for n in counts]


def bench_base(t2i: TextToImage, counter: YoloCounter, seeds: int, out_dir: Path,
               counts: range = range(1, 11), progress: Progress | None = None) -> dict:
    """Count accuracy of the base pipeline, judged by the detector and cross-checked by connected components."""
    prompts = base_prompts(counts)
    pairs, present, agree, samples, labels = [], [], [], [], []
    seed_list = [BENCH_BASE_SEED_BASE + i for i in range(seeds)]
    started = time.perf_counter()
    for k, (prompt, cls, n) in enumerate(prompts):
        images = t2i.generate(prompt, seed_list)
        for j, (image, det) in enumerate(zip(images, counter.detect(images))):
            got = det.count(cls)
            pairs.append((n, got))
            present.append(got > 0)
            all_classes = sum(det.count(c) for c in counter.classes)
            pil = to_pil(image)
            agree.append(all_classes == crosscheck_count(np.asarray(pil)))
            if j == 0:
                samples.append(draw_boxes(pil, det.of(cls).boxes, scale=2))
                labels.append(f"{n} {PLURALS[cls][:5]}: {got}")
        if progress:
            progress(k + 1, len(prompts))
    generation_s = time.perf_counter() - started

    out_dir.mkdir(parents=True, exist_ok=True)
    grid(samples, columns=len(counts), labels=labels).save(out_dir / "base_samples.png")
    pc = per_count(pairs)
    plot_per_count(pc, out_dir / "base_accuracy_per_count.png", "base pipeline, counted by the detector")
    return {
        "overall": summarize(pairs),
        "per_count": pc,
        "class_presence": round(float(np.mean(present)), 4),
        "detector_vs_crosscheck_agreement": round(float(np.mean(agree)), 4),
        "speed": {**image_latency(t2i), "bench_images_per_s": round(len(pairs) / generation_s, 2)},
        "sampler": {"num_inference_steps": t2i.num_inference_steps, "guidance_scale": t2i.guidance_scale},
        "pictures": [str(out_dir / "base_samples.png"), str(out_dir / "base_accuracy_per_count.png")],
    }


def image_latency(t2i: TextToImage, repeats: int = 7) -> dict:
    """Median seconds for one image alone, and per image in a batch of 16, at the shipped step count."""
    prompt = caption(CLASSES[0], list(COLOURS)[0], 5)
    t2i.generate(prompt, [0])  # warm-up
    single = []
    for r in range(repeats):
        t = time.perf_counter()
        t2i.generate(prompt, [r])
        single.append(time.perf_counter() - t)
    t = time.perf_counter()
    t2i.generate(prompt, list(range(16)), batch_size=16)
    batched = (time.perf_counter() - t) / 16
    return {"single_image_s": round(statistics.median(single), 4), "batched_image_s": round(batched, 4)}


def markdown_table(per_count_stats: dict[str, dict], overall: dict) -> str:
    lines = ["| count | exact | MAE | mean detected | n |", "|---:|---:|---:|---:|---:|"]
    for c, s in list(per_count_stats.items()) + [("all", overall)]:
        lines.append(f"| {c} | {s['exact']:.3f} | {s['mae']:.3f} | {s['mean_count']:.2f} | {s['n']} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- count engine
BENCH_ENGINE_SEED_BASE = 11_000_000  # job seeds; candidates derive from them (engine.derive_seed)
BENCH_REFINE_SEED_BASE = 12_000_000


def bench_jobs(classes: list[str], counts: list[int], jobs_per_key: int) -> list[tuple[str, str, int, int]]:
    """(prompt without count, class, count, job seed): the same jobs for every policy."""
    colours = list(COLOURS)
    return [(f"a photo of {colours[(ci + n + j) % len(colours)]} {PLURALS[cls]}", cls, n, BENCH_ENGINE_SEED_BASE + 1000 * n + j)
            for ci, cls in enumerate(classes) for n in counts for j in range(jobs_per_key)]


def bench_engine(engine, tokens: dict, jobs: list, budget_seconds: float, budget_candidates: int, out_dir: Path,
                 policies=("resample", "library", "refine"), progress: Progress | None = None) -> dict:
    """Every job under every policy with the same budget (seconds and candidates; refine may spend the time
    the others leave on refinement iterations).

    The engine verifies with the detector alone (as it must on real models); the independent cross-check
    then says which verified images are wrong (``false_verified_rate``) and which are clean.
    """
    from .engine import Budget

    budget = Budget(max_seconds=budget_seconds, max_candidates=budget_candidates, max_iterations=100_000)
    rows = []
    strip = []
    for k, (prompt, cls, n, seed) in enumerate(jobs):
        for policy in policies:
            result = engine.generate(prompt, n, object_=cls, seed=seed, budget=budget, policy=policy,
                                     token=tokens.get((cls, n)))
            image = result.images[0]
            cross = crosscheck_count(to_uint8(image.image[None])[0])
            clean = image.verified and cross == n
            rows.append({"policy": policy, "cls": cls, "count": n, "verified": image.verified, "clean": clean,
                         "seconds": result.cost["seconds"], "candidates": result.cost["candidates"],
                         "iterations": result.cost["iterations"], "refined": image.iteration is not None})
            if policy == "refine" and image.iteration is not None and image.verified and len(strip) < 12:
                before = engine.t2i.generate(result.prompt, [image.seed])[0]
                strip.append((to_pil(before), to_pil(image.image), f"{n} {cls}"))
        if progress:
            progress(k + 1, len(jobs))

    def stats(sel: list[dict]) -> dict:
        verified = [r for r in sel if r["verified"]]
        clean = sum(r["clean"] for r in sel)
        seconds = sum(r["seconds"] for r in sel)
        return {"jobs": len(sel), "verified_rate": round(len(verified) / max(len(sel), 1), 4),
                "false_verified_rate": round(sum(not r["clean"] for r in verified) / max(len(verified), 1), 4),
                "clean_rate": round(clean / max(len(sel), 1), 4),
                "clean_per_s": round(clean / max(seconds, 1e-9), 4),
                "seconds_per_verified": round(seconds / max(len(verified), 1), 3) if verified else None,
                "candidates": sum(r["candidates"] for r in sel), "iterations": sum(r["iterations"] for r in sel)}

    result = {"budget_seconds": budget_seconds, "budget_candidates": budget_candidates, "jobs": len(jobs),
              "tokens": sorted(f"{c}-{n}" for (c, n), t in tokens.items() if t is not None),
              "policies": {p: stats([r for r in rows if r["policy"] == p]) for p in policies}}
    # A token policy must earn its place: it becomes the default only if it beats plain resampling on clean
    # images per second by more than the run-to-run noise (10%).
    best = max(policies, key=lambda p: result["policies"][p]["clean_per_s"])
    rate = result["policies"]
    earned = "resample" not in rate or rate[best]["clean_per_s"] > 1.10 * rate["resample"]["clean_per_s"]
    result["default_policy"] = best if earned else "resample"
    result["per_count"] = {str(n): {p: stats([r for r in rows if r["policy"] == p and r["count"] == n])["clean_rate"]
                                    for p in policies} for n in sorted({r["count"] for r in rows})}
    out_dir.mkdir(parents=True, exist_ok=True)
    if strip:
        pictures = [im for before, after, _ in strip for im in (before, after)]
        labels = [f"{label} {tag}" for _, _, label in strip for tag in ("before", "after")]
        grid([draw_boxes(p, [], scale=2) for p in pictures], columns=2, labels=labels).save(out_dir / "refine_strip.png")
        result["pictures"] = [str(out_dir / "refine_strip.png")]
    return result


def bench_refine(engine, cases: list[tuple[str, str, int, int]], max_iterations: int,
                 progress: Progress | None = None) -> dict:
    """Refinement (the paper's per-seed setting) on seeds whose base image misses: success = verified."""
    from dataclasses import replace

    from .count_token import place_token
    from .prompts import with_count

    outcomes = []
    for k, (prompt, cls, n, seed) in enumerate(cases):
        token_prompt, init_word = place_token(with_count(prompt, cls, n), n)
        config = replace(engine.refine_config, max_iterations=max_iterations)
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


def near_misses(engine, jobs: list, per_job: int = 1) -> list[tuple[str, str, int, int]]:
    """Seeds whose base image is off by 1..3 (the cases refinement is for), ``per_job`` per job."""
    from .prompts import with_count

    cases = []
    for prompt, cls, n, seed in jobs:
        seeds = [seed * 7 + i for i in range(16)]
        images = engine.t2i.generate(with_count(prompt, cls, n), seeds)
        found = [s for s, d in zip(seeds, engine.counter.detect(images)) if 1 <= abs(d.count(cls) - n) <= 3]
        cases += [(prompt, cls, n, s) for s in found[:per_job]]
    return cases


def bench_library(engine, tokens: dict, validation_seeds: int, progress: Progress | None = None) -> dict:
    """Held-out exact, MAE and per-seed hit rate of library tokens against the base prompt (same seeds)."""
    from .count_token import place_token
    from .optimizer import LIBRARY_VALIDATION_SEED_BASE

    seeds = [LIBRARY_VALIDATION_SEED_BASE + 500_000 + i for i in range(validation_seeds)]  # never used in learning
    pairs_base, pairs_token, per = [], [], {}
    for k, ((cls, n), token) in enumerate(sorted(tokens.items())):
        base, tok = [], []
        prompts = engine.library_prompts(cls, n)
        per_prompt = max(1, validation_seeds // len(prompts))
        for i, prompt in enumerate(prompts):
            share = seeds[i * per_prompt:(i + 1) * per_prompt]
            base += [(n, d.count(cls)) for d in engine.counter.detect(engine.t2i.generate(prompt, share))]
            engine.t2i.set_token(token.vectors)
            tok += [(n, d.count(cls)) for d in engine.counter.detect(engine.t2i.generate(place_token(prompt, n)[0], share))]
        pairs_base += base
        pairs_token += tok
        per[f"{cls}-{n}"] = {"base": summarize(base), "token": summarize(tok)}
        if progress:
            progress(k + 1, len(tokens))
    b, t = summarize(pairs_base), summarize(pairs_token)
    return {"base_exact": b["exact"], "token_exact": t["exact"], "base_mae": b["mae"], "token_mae": t["mae"],
            "mae_reduction": round(1 - t["mae"] / b["mae"], 4) if b["mae"] else None, "per_key": per}


def bench_iteration(engine, repeats: int = 7, seeds_per_iteration: int = 1) -> dict:
    """Median seconds of one refine iteration vs the floor: one forward + backward of the same generation."""
    import resource

    from .count_token import place_token
    from .optimizer import OptimizeConfig, optimize

    cls, n = engine.counter.classes[0], 5
    token_prompt, init_word = place_token(f"a photo of {n} {PLURALS.get(cls, cls)}", n)
    init = engine.word_vectors(init_word)
    seeds = list(range(seeds_per_iteration))

    floor = []
    for r in range(repeats + 1):
        params = {k: v.clone().requires_grad_(True) for k, v in init.items()}
        t = time.perf_counter()
        engine.t2i.generate_differentiable(token_prompt, seeds, params).mean().backward()
        floor.append(time.perf_counter() - t)
    config = OptimizeConfig(mode="refine", max_iterations=repeats + 1)
    # No verifier: every iteration runs in full, whatever the images show.
    result = optimize(engine.t2i, engine.counter, token_prompt, cls, n, init, lambda _i: seeds, config)
    elapsed = [h.elapsed for h in result.history]
    per_iteration = [b - a for a, b in zip([0.0] + elapsed[:-1], elapsed)]
    it_s, floor_s = statistics.median(per_iteration[1:]), statistics.median(floor[1:])  # first ones warm up
    return {"iteration_s": round(it_s, 4), "floor_s": round(floor_s, 4), "ratio": round(it_s / floor_s, 3),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "seeds_per_iteration": seeds_per_iteration, "num_inference_steps": engine.t2i.num_inference_steps}
