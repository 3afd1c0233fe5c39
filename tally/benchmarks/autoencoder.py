"""``tally bench autoencoder``: does a round trip through the shared autoencoder keep every object countable?

Fresh rendered scenes of every class and count 1..12 are encoded and decoded; each round trip is verified by
the detector alone (as production verifies) and counted by the independent cross-check. No prompt and no token
can make a generator draw what its decoder cannot.
"""

from __future__ import annotations

import numpy as np
import torch

from optimization.counter import Counter, verify
from optimization.reference.scenes import CLASSES, MAX_COUNT, MIN_COUNT, render_scene
from optimization.reference.crosscheck import crosscheck_count
from optimization.seeds import BENCH_AUTOENCODER
from optimization.visualize import grid, to_pil

from .common import Progress, scene_tensor

COUNTS = range(MIN_COUNT, MAX_COUNT + 1)


@torch.no_grad()
def round_trip(vae, images: torch.Tensor) -> torch.Tensor:
    """``[B, 3, H, W]`` in [0, 1] through the autoencoder (posterior mean) and back."""
    x = images.to(vae.device, vae.dtype) * 2 - 1
    return (vae.decode(vae.encode(x).latent_dist.mean).sample.float().clamp(-1, 1) + 1) / 2


def bench_autoencoder(vae, counter: Counter, per_cell: int = 50, progress: Progress | None = None,
                      grid_path=None) -> dict:
    per_class: dict[str, dict] = {}
    samples, labels = [], []
    cells = len(CLASSES) * len(COUNTS)
    for ci, cls in enumerate(CLASSES):
        per_class[cls] = {"per_count": {}}
        for n in COUNTS:
            seeds = [BENCH_AUTOENCODER + (ci * 100 + n) * 1000 + i for i in range(per_cell)]
            images = scene_tensor([render_scene(s, count=n, cls=cls).image for s in seeds])
            back = round_trip(vae, images)
            dets = counter.detect(back)
            arrays = (back * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
            verified = [verify(d, cls, n, counter.config).verified for d in dets]
            exact = [crosscheck_count(a) == n for a in arrays]
            per_class[cls]["per_count"][str(n)] = {"verified": round(float(np.mean(verified)), 4),
                                                   "crosscheck_exact": round(float(np.mean(exact)), 4)}
            samples += [to_pil(images[0]), to_pil(back[0])]
            labels += [f"{n} {cls[:5]}", "round trip"]
            if progress:
                progress(ci * len(COUNTS) + n, cells)
    cells_ = [c for p in per_class.values() for c in p["per_count"].values()]
    result = {"per_class": per_class, "scenes_per_cell": per_cell,
              "min_verified": min(c["verified"] for c in cells_),
              "min_crosscheck_exact": min(c["crosscheck_exact"] for c in cells_),
              "mean_verified": round(float(np.mean([c["verified"] for c in cells_])), 4),
              "mean_crosscheck_exact": round(float(np.mean([c["crosscheck_exact"] for c in cells_])), 4)}
    if grid_path:
        big = [im.resize((im.width * 2, im.height * 2)) for im in samples]
        grid(big, columns=2 * len(COUNTS) // 2, labels=labels).save(grid_path)
        result["grid_png"] = str(grid_path)
    return result


def table(result: dict) -> str:
    """Rows: class; columns: count; cells: verified / cross-check exact."""
    lines = ["| class | " + " | ".join(str(n) for n in COUNTS) + " |", "|---|" + "---:|" * len(COUNTS)]
    for cls, p in result["per_class"].items():
        cells = [f"{c['verified']:.2f}/{c['crosscheck_exact']:.2f}" for c in p["per_count"].values()]
        lines.append(f"| {cls} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
