"""``tally bench detector``: exact count of the reference detector on fresh renders, clean and degraded."""

from __future__ import annotations

import numpy as np

from optimization.counter import Counter, count
from optimization.reference.scenes import degrade, render_scene
from optimization.seeds import BENCH_DETECTOR

from .common import Progress, per_count, scene_tensor, summarize


def bench_detector(counter: Counter, scenes: int, progress: Progress | None = None, batch: int = 64) -> dict:
    """Exact count of the scene's class on fresh renders (counts 1..12), clean and degraded like generations."""
    clean, degraded = [], []
    for start in range(0, scenes, batch):
        seeds = range(BENCH_DETECTOR + start, BENCH_DETECTOR + min(start + batch, scenes))
        rendered = [render_scene(s) for s in seeds]
        noisy = [degrade(r.image, np.random.default_rng(r.seed)) for r in rendered]
        for target_list, images in ((clean, [r.image for r in rendered]), (degraded, noisy)):
            dets = counter.detect(scene_tensor(images))
            target_list.extend((r.count, count(counter, d, r.objects[0].cls)) for r, d in zip(rendered, dets))
        if progress:
            progress(min(start + batch, scenes), scenes)
    return {"overall": summarize(clean), "per_count": per_count(clean), "degraded": summarize(degraded)}
