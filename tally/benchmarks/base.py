"""``tally bench base``: count accuracy of a model's base pipeline (no count token), what it draws for ordinary
requests and for crowds, and a sample grid a person looks at."""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path

import numpy as np

from optimization.counter import count, detection_kinds, verify
from optimization.engine import CountEngine
from optimization.prompts import plural, with_count
from optimization.seeds import BENCH_BASE
from optimization.visualize import draw_kinds, grid, to_pil, to_uint8, with_legend

from .common import Progress, per_count, summarize
from .plots import plot_per_count

COUNTS = range(1, 13)
# Requests as people write them: `with_count` puts the count in, as the API does ({c}: colour, {o}: plural).
PHRASINGS = (
    "I need exactly {n} {c} {o}", "{n} {c} {o} on a table", "{n} {c} {o} please", "a photo of {n} {c} {o}",
    "there are {n} {c} {o} on the floor", "I want {n} {c} {o}", "show me {n} {c} {o}", "draw {n} {c} {o}",
    "{n} {c} {o}", "a picture of {n} {c} {o} on the wall", "can you draw {n} {c} {o}", "exactly {n} {c} {o}",
    "an image with {n} {c} {o}", "please draw {n} {c} {o} on paper", "I would like to see {n} {c} {o}",
    "give me {n} {c} {o}", "generate {n} {c} {o}", "just {n} {c} {o}", "make {n} {c} {o} on the table",
    "a photograph of {n} {c} {o}",
)
NUMBER_WORDS = "zero one two three four five six seven eight nine ten eleven twelve".split()
# Plain prompts that may draw a crowd ({c}: colour, {o}: plural): the best one per class is reported.
CROWD_PROMPTS = ("many {c} {o}", "a photo of 12 {c} {o}", "a photo of twelve {c} {o}", "a photo of 10 {c} {o}",
                 "a photo of many {c} {o}", "a photo of {c} {o}")
CROWD = 8


def base_prompts(engine: CountEngine, counts: range = range(1, 11)) -> list[tuple[str, str, int]]:
    """(prompt, class, count) for every class x count; the model's prompt variants (e.g. colours) rotate
    so each appears evenly."""
    out = []
    for ci, cls in enumerate(engine.counter.classes):
        for n in counts:
            texts = engine.library_prompts(cls, n)
            out.append((texts[(ci + n) % len(texts)], cls, n))
    return out


def _colours(engine: CountEngine) -> list[str]:
    return engine.spec.attribute_words or [""]


def bench_base(engine: CountEngine, seeds: int, out_dir: Path, counts: range = COUNTS,
               progress: Progress | None = None) -> dict:
    """Count accuracy judged by the detector (``exact``: the counted number; ``verified``: the production
    verdict), its agreement with the model's cross-check, phrasings, crowds, and the sample grid."""
    t2i, counter = engine.t2i, engine.counter
    prompts = base_prompts(engine, counts)
    pairs, verified, present, agree, samples, labels = [], {}, [], [], [], []
    by_class: dict[str, list[tuple[int, int]]] = {}
    verified_by_class: dict[str, dict[int, list[bool]]] = {}
    drawn_exact: dict[int, list[bool]] = {}  # the cross-check counts the number asked
    seed_list = [BENCH_BASE + i for i in range(seeds)]
    started = time.perf_counter()
    for k, (prompt, cls, n) in enumerate(prompts):
        images = t2i.generate(prompt, seed_list)
        for j, (image, det) in enumerate(zip(images, counter.detect(images))):
            got = count(counter, det, cls)
            ok = verify(det, cls, n, counter.config).verified
            pairs.append((n, got))
            by_class.setdefault(cls, []).append((n, got))
            verified.setdefault(n, []).append(ok)
            verified_by_class.setdefault(cls, {}).setdefault(n, []).append(ok)
            present.append(got > 0)
            pil = to_pil(image)
            if engine.crosscheck:
                seen = engine.crosscheck(np.asarray(pil))
                agree.append(sum(count(counter, det, c) for c in counter.classes) == seen)
                drawn_exact.setdefault(n, []).append(seen == n)
            if j == 0:
                samples.append(draw_kinds(pil, detection_kinds(det, cls, counter.config), scale=2))
                labels.append(f"{n} {plural(cls)[:5]}: {got}{' ok' if ok else ''}")
        if progress:
            progress(k + 1, len(prompts) + 2)
    generation_s = time.perf_counter() - started

    out_dir.mkdir(parents=True, exist_ok=True)
    name = f"base_samples-{engine.spec.id}.png"
    with_legend(grid(samples, columns=len(counts), labels=labels)).save(out_dir / name)
    pc = _with_verified(per_count(pairs), verified)
    plot = out_dir / f"base_accuracy_per_count-{engine.spec.id}.png"
    plot_per_count(pc, plot, f"{engine.spec.id}: base pipeline, counted by the detector")
    phrasings = bench_phrasings(engine, seeds=min(4, seeds))  # --seeds 1 (the tests) stays quick
    if progress:
        progress(len(prompts) + 1, len(prompts) + 2)
    drawable = bench_crowds(engine, seeds=seeds)
    if progress:
        progress(len(prompts) + 2, len(prompts) + 2)
    return {
        "model": engine.spec.id,
        "overall": summarize(pairs),
        "per_count": pc,
        "per_class": {cls: {"per_count": _with_verified(per_count(p), verified_by_class[cls])} for cls, p in by_class.items()},
        "targets": targets(verified_by_class, drawn_exact),
        "large_counts": large_counts(by_class),
        "class_presence": round(float(np.mean(present)), 4),
        "phrasings": phrasings,
        "drawable": drawable,
        "detector_vs_crosscheck_agreement": round(float(np.mean(agree)), 4) if agree else None,
        "speed": {**image_latency(engine), "bench_images_per_s": round(len(pairs) / generation_s, 2)},
        "sampler": {"num_inference_steps": t2i.num_inference_steps, "guidance_scale": t2i.guidance_scale,
                    "guidance_rescale": t2i.guidance_rescale, "guidance_schedule": t2i.guidance_schedule},
        "grid_png": str(out_dir / name),
        "pictures": [str(out_dir / name), str(plot)],
    }


def _with_verified(stats: dict[str, dict], verified: dict[int, list[bool]]) -> dict[str, dict]:
    return {n: {**s, "verified": round(float(np.mean(verified[int(n)])), 4)} for n, s in stats.items()}


def targets(verified_by_class: dict[str, dict[int, list[bool]]], drawn_exact: dict[int, list[bool]]) -> dict:
    """The figures the reference world is held to: verified rate over counts 6..10 with its standard error (is a
    miss beyond noise?), and the worst (class, count) cell 1..10 with its images (the least of 40 small cells sits
    below their mean by chance alone). Beside them, how often the model's cross-check counts the number asked at
    6..10: what the generator drew, whoever verifies it (with no cross-check, None)."""
    mid = [ok for per in verified_by_class.values() for n, v in per.items() if 6 <= n <= 10 for ok in v]
    cells = {(cls, n): float(np.mean(v)) for cls, per in verified_by_class.items() for n, v in per.items() if n <= 10}
    drawn = [ok for n, v in drawn_exact.items() if 6 <= n <= 10 for ok in v]
    out = dict.fromkeys(("verified_6_10", "verified_6_10_standard_error", "min_verified_cell_1_10",
                         "min_verified_cell", "images_per_cell"))
    out["crosscheck_exact_6_10"] = round(float(np.mean(drawn)), 4) if drawn else None
    if mid:  # every count has as many images, so the pooled rate is the mean over counts
        rate = float(np.mean(mid))
        out.update(verified_6_10=round(rate, 4),
                   verified_6_10_standard_error=round(math.sqrt(rate * (1 - rate) / len(mid)), 4))
    if cells:
        (cls, n), worst = min(cells.items(), key=lambda item: item[1])
        out.update(min_verified_cell_1_10=round(worst, 4), min_verified_cell=f"{n} {plural(cls)}",
                   images_per_cell=len(verified_by_class[cls][n]))
    return out


def bench_phrasings(engine: CountEngine, seeds: int = 4) -> dict:
    """Class presence on twenty requests as people write them (count and class rotate): the prompt is what the
    API would send (``with_count``), so words the model does not know would show as noise here."""
    classes, colours = engine.counter.classes, _colours(engine)
    rows = []
    for i, phrase in enumerate(PHRASINGS):
        cls, n, colour = classes[i % len(classes)], 2 + (i * 5) % 11, colours[i % len(colours)]
        number = NUMBER_WORDS[n] if i % 2 else str(n)
        typed = " ".join(phrase.format(n=number, c=colour, o=plural(cls)).split())
        prompt = with_count(typed, cls, n)
        images = engine.t2i.generate(prompt, [BENCH_BASE + 900_000 + s for s in range(seeds)])
        dets = engine.counter.detect(images)
        found = [count(engine.counter, d, cls) > 0 for d in dets]
        rows.append({"typed": typed, "prompt": prompt, "class_presence": round(float(np.mean(found)), 4)})
    return {"class_presence": round(float(np.mean([r["class_presence"] for r in rows])), 4), "prompts": rows}


def bench_crowds(engine: CountEngine, seeds: int = 16) -> dict:
    """Per class, the plain prompt (``CROWD_PROMPTS``) that most often yields at least ``CROWD`` clean, separate
    shapes: verified by the detector at their own count and counted alike by the cross-check."""
    from optimization.reference.crosscheck import judge

    out = {}
    colour = _colours(engine)[0]
    for cls in engine.counter.classes:
        rates = {}
        for template in CROWD_PROMPTS:
            prompt = " ".join(template.format(c=colour, o=plural(cls)).split())
            images = engine.t2i.generate(prompt, [BENCH_BASE + 950_000 + s for s in range(seeds)])
            hits = 0
            for image, det in zip(to_uint8(images), engine.counter.detect(images)):
                own = det.count(cls, engine.counter.config.verify_confidence)
                seen = judge(image)
                hits += (own >= CROWD and verify(det, cls, own, engine.counter.config).verified
                         and seen.clean and seen.count == own)
            rates[prompt] = round(hits / seeds, 4)
        best = max(rates, key=rates.get)
        out[cls] = {"clean_ge8_rate": rates[best], "prompt": best, "rates": rates}
    return out


def large_counts(by_class: dict[str, list[tuple[int, int]]], smallest: int = 6) -> dict:
    """How a model fares from ``smallest`` objects on: mean exact rate, and per class the mean signed offset
    of the detected count from the asked one (a systematic drift a token can correct; noise averages out)."""
    large = [(n, got) for pairs in by_class.values() for n, got in pairs if smallest <= n <= 10]
    offsets = {cls: round(float(np.mean([got - n for n, got in pairs if smallest <= n <= 10])), 3)
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
