"""``tally bench count-loss``: does the count loss move the true count, or only the detector's reading of it?

For every class at counts 6, 8 and 10, one seed's initial noise is optimized against the count loss for a fixed
number of iterations (no early stop); at every iteration the detector's confident count and the independent
judge's count (``crosscheck``) of the current image are recorded. A loss that teaches the image to fool the
detector shows as a detector error that falls while the judge's stays; one that adds or removes real objects
shows both falling. Each setting of ``eot_samples`` (0: the plain potential) runs on the same cases.
"""

from __future__ import annotations

import numpy as np

from optimization.config import NoiseConfig
from optimization.counter import Verification
from optimization.engine import CountEngine
from optimization.noise import optimize_noise
from optimization.prompts import with_count
from optimization.seeds import BENCH_ENGINE
from optimization.visualize import to_uint8

from .common import Progress

COUNTS = (6, 8, 10)


def bench_count_loss(engine: CountEngine, iterations: int = 10, settings: tuple[int, ...] = (0, 4),
                     progress: Progress | None = None) -> dict:
    cases = [(cls, n) for cls in engine.counter.classes for n in COUNTS]
    colour = (engine.spec.attribute_words or [""])[0]
    out = {"model": engine.spec.id, "cases": len(cases), "iterations": iterations, "settings": {}}
    done = 0
    for samples in settings:
        detector_err, judge_err = [], []  # [case][iteration]
        for k, (cls, n) in enumerate(cases):
            prompt = with_count(f"a photo of {colour} {cls}", cls, n)
            seen_detector, seen_judge = [], []

            def record(images, detections, cls=cls, n=n, seen_detector=seen_detector, seen_judge=seen_judge):
                verdicts = engine.verify_images(images, detections, cls, n)
                seen_detector.append(abs(verdicts[0].confident - n))
                seen_judge.append(abs(engine.crosscheck(to_uint8(images)[0]) - n))
                return [Verification(n, [])]  # never verified: every step runs

            config = NoiseConfig(max_iterations=iterations + 1, eot_samples=samples, seed=k)
            optimize_noise(engine.t2i, engine.counter, prompt, cls, n, BENCH_ENGINE + 500_000 + k, config, record)
            detector_err.append(seen_detector)
            judge_err.append(seen_judge)
            done += 1
            if progress:
                progress(done, len(cases) * len(settings))
        d, j = np.mean(detector_err, axis=0), np.mean(judge_err, axis=0)
        out["settings"][f"eot{samples}" if samples else "plain"] = {
            "eot_samples": samples, "detector_error": [round(float(v), 3) for v in d],
            "judge_error": [round(float(v), 3) for v in j],
            "detector_fall": round(float(d[0] - d[-1]), 3), "judge_fall": round(float(j[0] - j[-1]), 3)}
    return out


def table(result: dict) -> str:
    lines = ["| setting | detector error: first → last | judge error: first → last | detector fall | judge fall |",
             "|---|---|---|---:|---:|"]
    for name, s in result["settings"].items():
        lines.append(f"| {name} | {s['detector_error'][0]:.2f} → {s['detector_error'][-1]:.2f} | "
                     f"{s['judge_error'][0]:.2f} → {s['judge_error'][-1]:.2f} | {s['detector_fall']:.2f} | "
                     f"{s['judge_fall']:.2f} |")
    return "\n".join(lines)
