"""A generator's own images that two independent counters accept, as training data for it (reward-ranked
fine-tuning: GORS, Huang et al., T2I-CompBench, NeurIPS 2023; RAFT, Dong et al., 2023).

``selected_samples`` draws captions that state a count as it is (``captions.stated_caption``), generates one image
each with the model's own sampler, and keeps an image only where the detector verifies the count stated and the
judge (``crosscheck.judge``) finds exactly that many whole shapes and nothing else. ``tally reference train-t2i
--self-samples N`` trains the generator further on them beside fresh rendered scenes.
"""

from __future__ import annotations

import numpy as np
import torch

from ..counter import Counter, verify
from ..pipelines import TextToImage
from ..visualize import to_uint8
from .autoencoder import Progress
from .captions import stated_caption
from .crosscheck import judge
from .scenes import CLASSES, COLOURS, MAX_COUNT, MIN_COUNT

SELF_SAMPLE_SEEDS = 8_000_000  # disjoint from the benches' seeds (tally.benchmarks.common)
BATCH = 16


def selected_samples(t2i: TextToImage, counter: Counter, n: int, seed: int,
                     progress: Progress | None = None) -> tuple[torch.Tensor, list[str], dict]:
    """The accepted images (uint8 ``[k, 3, H, W]``), their captions, and how many were drawn and kept per count."""
    rng = np.random.default_rng(seed)
    kept_images, kept_captions = [], []
    drawn, kept = np.zeros(MAX_COUNT + 1, int), np.zeros(MAX_COUNT + 1, int)
    for start in range(0, n, BATCH):
        size = min(BATCH, n - start)
        asked = [(CLASSES[int(rng.integers(len(CLASSES)))], list(COLOURS)[int(rng.integers(len(COLOURS)))],
                  int(rng.integers(MIN_COUNT, MAX_COUNT + 1))) for _ in range(size)]
        captions = [stated_caption(cls, colour, count, rng) for cls, colour, count in asked]
        seeds = [SELF_SAMPLE_SEEDS + seed * 1_000_000 + start + i for i in range(size)]
        # Both counters look at the 8-bit images that would be trained on.
        pixels = torch.from_numpy(np.stack(to_uint8(t2i.generate_each(captions, seeds)))).permute(0, 3, 1, 2)
        for (cls, _, count), caption, image, detections in zip(asked, captions, pixels,
                                                                counter.detect(pixels.float() / 255)):
            judged = judge(image.permute(1, 2, 0).numpy())
            drawn[count] += 1
            if judged.clean and verify(detections, cls, count, counter.config, judged.count).verified:
                kept[count] += 1
                kept_images.append(image)
                kept_captions.append(caption)
        if progress:
            progress(start + size, n)
    stats = {"drawn": int(drawn.sum()), "kept": int(kept.sum()),
             "kept_rate_per_count": {c: round(float(kept[c] / drawn[c]), 4) for c in range(MIN_COUNT, MAX_COUNT + 1)
                                     if drawn[c]}}
    images = torch.stack(kept_images) if kept_images else torch.empty((0, 3, t2i.image_size, t2i.image_size),
                                                                        dtype=torch.uint8)
    return images, kept_captions, stats
