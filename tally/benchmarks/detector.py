"""``tally bench detector``: exact count of the reference detector on fresh renders (clean, degraded, and
with hard negatives beside the objects), and how often it verifies a generated image wrongly when it
verifies alone, judged by the cross-check."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from optimization.counter import Counter, count, verify
from optimization.reference.scenes import MAX_COUNT, degrade, render_scene
from optimization.seeds import BENCH_BASE, BENCH_DETECTOR
from optimization.visualize import draw_kinds, grid, to_uint8, with_legend

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


DISAGREEMENTS_SHOWN = 48  # judge-clean images the detector counts otherwise, drawn for a person to look at
SIDES = {"5-6 px": 6, "7-8 px": 8, "9+ px": 64}  # buckets of a missed shape's shorter side, by their largest
DOTS = "5-6 px"  # rendered fragments are 3..5 px, objects 7..15 px: a whole shape of 5-6 px lies between
PRESENCE_FLOORS = (None, 0.02, 0.05, 0.1)  # VerifyConfig.presence_floor values the bench prices on the same images


def _overlap(a, b) -> float:
    """Intersection over union of two boxes (x0, y0, x1, y1)."""
    w, h = min(a[2], b[2]) - max(a[0], b[0]), min(a[3], b[3]) - max(a[1], b[1])
    inter = max(w, 0) * max(h, 0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else 0.0


def missed_shapes(seen, kinds) -> list[tuple[str, str]]:
    """(what the detector made of it, side bucket) of each shape the judge found and no confident detection covers:
    a dot it calls a fragment is a question of definition, a big shape it doubts is a question of the judge's."""
    confident = [box for box, kind, _, _ in kinds if kind == "confident"]
    missed = []
    for box in seen.boxes:
        if any(_overlap(box, c) > 0.3 for c in confident):
            continue
        overlap, kind = max(((_overlap(box, b), k) for b, k, _, _ in kinds), default=(0.0, ""))
        side = min(box[2] - box[0], box[3] - box[1])
        bucket = next(name for name, largest in SIDES.items() if side <= largest)
        missed.append((kind if overlap > 0.3 else "nothing", bucket))
    return missed


def bench_generated(engine, images: int, progress: Progress | None = None, batch: int = 16,
                    out_dir: Path | None = None) -> dict:
    """The detector on each model's generated images (every class x counts 1..12, base prompts), judged by the
    cross-check (``crosscheck.judge``), which shares nothing with it:

    - ``judge_clean_agreement``: on images whose shapes the judge finds all whole and separate, how often the
      detector's confident count of the class equals the judge's count;
    - ``other_class_rate``: images (all of one class) with a confident detection of another class;
    - ``detector_only.false_verified_rate``: of the images the detector verifies alone (as production does),
      the share whose judge count differs from the count asked (a touching pair is one component: a failure);
    - ``verified_given_judge_exact``: of the images the judge counts exactly and finds clean, the share the
      detector verifies (it must not refuse what a person would accept);
    - ``disagreements``: how the judge-clean images it counts otherwise split (under or over the judge; the
      doubt it reported that would make up the difference; ``missed_shapes``: what the detector made of each shape
      it did not count, by size; ``dots_only``: those where every such shape is a 5-6 px dot), and, with
      ``out_dir``, a picture of the first ones;
    - ``presence_floors``: the detector-alone verdicts again under each of ``PRESENCE_FLOORS`` (off: ``none``),
      what refusing the shapes it barely sees would save in false verifications and cost in true ones."""
    from optimization.reference.crosscheck import judge
    from tally.benchmarks.base import base_prompts

    counter = engine.counter
    # Detections below every verification floor change no verdict, so a lower NMS floor only adds what is priced.
    counter.nms_floor = min(counter.nms_floor, *(f for f in PRESENCE_FLOORS if f))
    priced = {str(f).lower(): counter.config.model_copy(update={"presence_floor": f}) for f in PRESENCE_FLOORS}
    prompts = base_prompts(engine, range(1, MAX_COUNT + 1))
    per_prompt = max(1, -(-images // len(prompts)))
    rows, shown, labels = [], [], []
    missed: dict[str, dict[str, int]] = {}  # what the detector made of a shape it did not count -> size -> shapes
    for k, (prompt, cls, n) in enumerate(prompts):
        seeds = [BENCH_BASE + 500_000 + i for i in range(per_prompt)]
        generated = engine.t2i.generate(prompt, seeds, batch_size=batch)
        for image, det in zip(to_uint8(generated), counter.detect(generated)):
            verdict = verify(det, cls, n, counter.config)
            seen = judge(image)
            rows.append({"count": n, "verified": verdict.verified, "reason": verdict.reason, "judge": seen.count,
                         "clean": seen.clean, "confident": verdict.confident, "ambiguous": verdict.ambiguous,
                         "unclear": verdict.doubtful,
                         "other": any(c != cls and c in counter.classes and p >= counter.config.count_confidence
                                      for c, p in zip(det.classes, det.confidences)),
                         "priced": {name: verify(det, cls, n, config).verified for name, config in priced.items()}})
            if seen.clean and verdict.confident != seen.count:
                shapes = missed_shapes(seen, verdict.kinds)
                for kind, bucket in shapes:
                    by_size = missed.setdefault(kind, {})
                    by_size[bucket] = by_size.get(bucket, 0) + 1
                # every shape it missed is a dot of the size this world's fragments have: a question of definition
                rows[-1]["dots_only"] = (verdict.confident + len(shapes) == seen.count
                                         and all(bucket == DOTS for _, bucket in shapes))
                if len(shown) < DISAGREEMENTS_SHOWN:
                    shown.append(draw_kinds(Image.fromarray(image), verdict.kinds, scale=2))
                    labels.append(f"{n} {cls[:5]}: judge {seen.count}, det {verdict.confident}")
        if progress:
            progress(k + 1, len(prompts))
    alone = [r for r in rows if r["verified"]]
    wrong = [r for r in alone if r["judge"] != r["count"]]
    clean = [r for r in rows if r["clean"]]
    judge_exact = [r for r in clean if r["judge"] == r["count"]]
    reasons: dict[str, int] = {}
    for r in rows:
        reasons[r["reason"] or "verified"] = reasons.get(r["reason"] or "verified", 0) + 1
    share = lambda part, whole: round(len(part) / max(len(whole), 1), 4)  # noqa: E731
    differ = [r for r in clean if r["confident"] != r["judge"]]
    under = [r for r in differ if r["confident"] < r["judge"]]
    disagreements = {"images": len(differ), "under": share(under, differ),
                     "under_made_up_by_ambiguous": share([r for r in under if r["confident"] + r["ambiguous"] == r["judge"]], differ),
                     "with_unclear": share([r for r in differ if r["unclear"]], differ),
                     "with_other_class": share([r for r in differ if r["other"]], differ),
                     "dots_only": share([r for r in differ if r.get("dots_only")], differ),
                     "missed_shapes": {kind: dict(sorted(by_size.items())) for kind, by_size in sorted(missed.items())}}
    if out_dir is not None and shown:
        out_dir.mkdir(parents=True, exist_ok=True)
        disagreements["png"] = str(out_dir / f"detector_disagreements-{engine.spec.id}.png")
        with_legend(grid(shown, columns=8, labels=labels)).save(disagreements["png"])
    return {"model": engine.spec.id, "images": len(rows),
            "judge_clean_images": len(clean),
            "judge_clean_agreement": share([r for r in clean if r["confident"] == r["judge"]], clean),
            "other_class_rate": share([r for r in rows if r["other"]], rows),
            "verified_given_judge_exact": share([r for r in judge_exact if r["verified"]], judge_exact),
            "detector_only": {"verified_rate": share(alone, rows), "false_verified_rate": share(wrong, alone),
                              "false_verified": len(wrong), "verified": len(alone)},
            "configured": {"verified_rate": share([r for r in alone if r["judge"] == r["count"]], rows)},
            "disagreements": disagreements,
            "presence_floors": {name: _priced(rows, judge_exact, name) for name in priced},
            "outcomes": reasons}


def _priced(rows: list[dict], judge_exact: list[dict], name: str) -> dict:
    """Verified, falsely verified, and verified among the judge-exact clean images under one priced config."""
    verified = [r for r in rows if r["priced"][name]]
    return {"verified": len(verified), "false_verified": sum(r["judge"] != r["count"] for r in verified),
            "verified_given_judge_exact": round(sum(r["priced"][name] for r in judge_exact) / max(len(judge_exact), 1), 4)}
