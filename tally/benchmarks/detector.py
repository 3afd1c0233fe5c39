"""``tally bench detector``: exact count of the reference detector on fresh renders (clean, degraded, and
with hard negatives beside the objects), and how often it verifies a generated image wrongly when it
verifies alone, judged by the cross-check."""

from __future__ import annotations

import numpy as np

from optimization.counter import Counter, count, verify
from optimization.reference.scenes import MAX_COUNT, degrade, render_scene
from optimization.seeds import BENCH_BASE, BENCH_DETECTOR
from optimization.visualize import to_uint8

from .common import Progress, per_count, scene_tensor, summarize


def bench_detector(counter: Counter, scenes: int, progress: Progress | None = None, batch: int = 64) -> dict:
    """Exact count of the scene's class on fresh renders (counts 1..12), clean and degraded like generations."""
    clean, degraded, negatives = [], [], []
    unclear_verified = 0
    for start in range(0, scenes, batch):
        seeds = range(BENCH_DETECTOR + start, BENCH_DETECTOR + min(start + batch, scenes))
        rendered = [render_scene(s) for s in seeds]
        noisy = [degrade(r.image, np.random.default_rng(r.seed)) for r in rendered]
        for target_list, images in ((clean, [r.image for r in rendered]), (degraded, noisy)):
            dets = counter.detect(scene_tensor(images))
            target_list.extend((r.count, count(counter, d, r.objects[0].cls)) for r, d in zip(rendered, dets))
        # The same seeds with 1..2 hard negatives (merged blobs, fragments, smears, stripes) beside the objects:
        # the objects are still counted, the negatives not, and the image must not verify.
        hard = [render_scene(s, count=min(r.count, MAX_COUNT - 2), cls=r.objects[0].cls, negatives=1 + s % 2)
                for s, r in zip(seeds, rendered)]
        for r, d in zip(hard, counter.detect(scene_tensor([h.image for h in hard]))):
            negatives.append((r.count, count(counter, d, r.objects[0].cls)))
            unclear_verified += verify(d, r.objects[0].cls, r.count, counter.config).verified
        if progress:
            progress(min(start + batch, scenes), scenes)
    return {"overall": summarize(clean), "per_count": per_count(clean), "degraded": summarize(degraded),
            "hard_negatives": {**summarize(negatives), "verified_rate": round(unclear_verified / max(len(negatives), 1), 4)}}


def bench_generated(engine, images: int, progress: Progress | None = None, batch: int = 10) -> dict:
    """Verification of generated images (every class x counts 1..10, base prompts) by the detector alone, as
    production verifies, and as configured (with the cross-check): ``false_verified_rate`` is the share of
    detector-verified images whose cross-check count differs from the count asked."""
    from tally.benchmarks.base import base_prompts

    prompts = base_prompts(engine)
    per_prompt = max(1, -(-images // len(prompts)))
    rows = []
    for k, (prompt, cls, n) in enumerate(prompts):
        seeds = [BENCH_BASE + 500_000 + i for i in range(per_prompt)]
        generated = engine.t2i.generate(prompt, seeds, batch_size=batch)
        for image, det in zip(to_uint8(generated), engine.counter.detect(generated)):
            verdict = verify(det, cls, n, engine.counter.config)
            rows.append({"count": n, "verified": verdict.verified, "crosscheck": engine.crosscheck(image),
                         "reason": verdict.reason})
        if progress:
            progress(k + 1, len(prompts))
    alone = [r for r in rows if r["verified"]]
    wrong = [r for r in alone if r["crosscheck"] != r["count"]]
    reasons = {}
    for r in rows:
        reasons[r["reason"] or "verified"] = reasons.get(r["reason"] or "verified", 0) + 1
    return {"model": engine.spec.id, "images": len(rows),
            "detector_only": {"verified_rate": round(len(alone) / len(rows), 4),
                              "false_verified_rate": round(len(wrong) / max(len(alone), 1), 4),
                              "false_verified": len(wrong), "verified": len(alone)},
            "configured": {"verified_rate": round(sum(r["crosscheck"] == r["count"] for r in alone) / len(rows), 4)},
            "outcomes": reasons}
