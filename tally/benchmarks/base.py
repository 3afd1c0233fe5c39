"""``tally bench base``: count accuracy of a model's base pipeline (no count token)."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np

from optimization.counter import count
from optimization.engine import CountEngine
from optimization.prompts import plural
from optimization.seeds import BENCH_BASE
from optimization.visualize import draw_boxes, grid, to_pil

from .common import Progress, per_count, summarize
from .plots import plot_per_count

COUNTS = range(1, 11)


def base_prompts(engine: CountEngine, counts: range = COUNTS) -> list[tuple[str, str, int]]:
    """(prompt, class, count) for every class x count; the model's prompt variants (e.g. colours) rotate
    so each appears evenly."""
    out = []
    for ci, cls in enumerate(engine.counter.classes):
        for n in counts:
            texts = engine.library_prompts(cls, n)
            out.append((texts[(ci + n) % len(texts)], cls, n))
    return out


def bench_base(engine: CountEngine, seeds: int, out_dir: Path, counts: range = COUNTS,
               progress: Progress | None = None) -> dict:
    """Count accuracy judged by the detector, and its agreement with the model's cross-check if it has one."""
    t2i, counter = engine.t2i, engine.counter
    prompts = base_prompts(engine, counts)
    pairs, present, agree, samples, labels = [], [], [], [], []
    by_class: dict[str, list[tuple[int, int]]] = {}
    seed_list = [BENCH_BASE + i for i in range(seeds)]
    started = time.perf_counter()
    for k, (prompt, cls, n) in enumerate(prompts):
        images = t2i.generate(prompt, seed_list)
        for j, (image, det) in enumerate(zip(images, counter.detect(images))):
            got = count(counter, det, cls)
            pairs.append((n, got))
            by_class.setdefault(cls, []).append((n, got))
            present.append(got > 0)
            pil = to_pil(image)
            if engine.crosscheck:
                agree.append(sum(count(counter, det, c) for c in counter.classes) == engine.crosscheck(np.asarray(pil)))
            if j == 0:
                samples.append(draw_boxes(pil, det.of(cls, counter.config.count_confidence).boxes, scale=2))
                labels.append(f"{n} {plural(cls)[:5]}: {got}")
        if progress:
            progress(k + 1, len(prompts))
    generation_s = time.perf_counter() - started

    out_dir.mkdir(parents=True, exist_ok=True)
    grid(samples, columns=len(counts), labels=labels).save(out_dir / "base_samples.png")
    pc = per_count(pairs)
    plot_per_count(pc, out_dir / "base_accuracy_per_count.png", f"{engine.spec.id}: base pipeline, counted by the detector")
    return {
        "model": engine.spec.id,
        "overall": summarize(pairs),
        "per_count": pc,
        "per_class": {cls: per_count(p) for cls, p in by_class.items()},
        "large_counts": large_counts(by_class),
        "class_presence": round(float(np.mean(present)), 4),
        "detector_vs_crosscheck_agreement": round(float(np.mean(agree)), 4) if agree else None,
        "speed": {**image_latency(engine), "bench_images_per_s": round(len(pairs) / generation_s, 2)},
        "sampler": {"num_inference_steps": t2i.num_inference_steps, "guidance_scale": t2i.guidance_scale},
        "pictures": [str(out_dir / "base_samples.png"), str(out_dir / "base_accuracy_per_count.png")],
    }


def large_counts(by_class: dict[str, list[tuple[int, int]]], smallest: int = 6) -> dict:
    """How a model fares from ``smallest`` objects on: mean exact rate, and per class the mean signed offset
    of the detected count from the asked one (a systematic drift a token can correct; noise averages out)."""
    large = [(n, got) for pairs in by_class.values() for n, got in pairs if n >= smallest]
    offsets = {cls: round(float(np.mean([got - n for n, got in pairs if n >= smallest])), 3)
               for cls, pairs in by_class.items() if any(n >= smallest for n, _ in pairs)}
    return {"from_count": smallest, "mean_exact": summarize(large)["exact"] if large else None,
            "mean_offset_per_class": offsets, "classes_off_by_1": sum(abs(o) >= 1 for o in offsets.values())}


def image_latency(engine: CountEngine, repeats: int = 7) -> dict:
    """Median seconds for one image alone, and per image in a batch of 16, at the model's step count."""
    prompt = engine.library_prompts(engine.counter.classes[0], 5)[0]
    engine.t2i.generate(prompt, [0])  # warm-up
    single = []
    for r in range(repeats):
        t = time.perf_counter()
        engine.t2i.generate(prompt, [r])
        single.append(time.perf_counter() - t)
    t = time.perf_counter()
    engine.t2i.generate(prompt, list(range(16)), batch_size=16)
    batched = (time.perf_counter() - t) / 16
    return {"single_image_s": round(statistics.median(single), 4), "batched_image_s": round(batched, 4)}
