"""The counting loss of an optimization step (Zafar, Wolf, Schwartz 2024), shared by token and noise
optimization: the detector's differentiable potential of the class against the target count, with the paper's
dynamic scale (``count_loss``), optionally as an expectation over small random changes (``jitter``), plus a
guard that makes fooling the detector expensive (``detector_guard``)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .config import OptimizeConfig
from .counter import Counter

Guard = Callable[[torch.Tensor, torch.Tensor, int, torch.Tensor], torch.Tensor]


def count_loss(potential: torch.Tensor, detected: list[int], target: int, fallback_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """|potential / scale - target| per image, with the paper's dynamic scale; zero detections use the fallback."""
    counts = torch.tensor(detected, dtype=potential.dtype, device=potential.device)
    scale = torch.where(counts > 0, potential.detach() / counts.clamp(min=1),
                        torch.full_like(counts, fallback_scale)).clamp(min=1e-6)
    return (potential / scale - target).abs(), scale


def jitter(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One random change a counter should not care about, differentiable: a shift of up to 3 px (edges
    replicated), a horizontal flip, a zoom of up to ±12% and, half the time, a light blur."""
    import torch.nn.functional as F

    h, w = images.shape[-2:]
    draw = lambda: float(torch.rand((), generator=generator))  # noqa: E731
    size = max(8, round(h * (1 + 0.24 * (draw() - 0.5))))
    out = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    pad = max(0, h - size) // 2 + 3
    out = F.pad(out, (pad, pad, pad, pad), mode="replicate")
    top, left = (int(v) for v in torch.randint(0, out.shape[-1] - h + 1, (2,), generator=generator))
    out = out[..., top:top + h, left:left + w]
    if draw() < 0.5:
        out = out.flip(-1)
    if draw() < 0.5:
        kernel = torch.tensor([1.0, 2.0, 1.0], device=images.device)
        kernel = (kernel[:, None] * kernel[None, :] / 16).expand(images.shape[1], 1, 3, 3)
        out = F.conv2d(F.pad(out, (1, 1, 1, 1), mode="replicate"), kernel, groups=images.shape[1])
    return out


def class_potential(counter: Counter, images: torch.Tensor, scores: torch.Tensor, cls_index: int, samples: int,
                    generator: torch.Generator) -> torch.Tensor:
    """The paper's potential of the class, ``[B]``: from the image's own scores, or (``samples`` > 0) averaged
    over that many ``jitter``ed copies (expectation over transformation)."""
    if samples <= 0:
        return scores[:, cls_index].sum(-1)
    copies = [counter.class_scores(counter.raw(jitter(images, generator)))[:, cls_index].sum(-1) for _ in range(samples)]
    return torch.stack(copies).mean(0)


def detector_guard(images: torch.Tensor, scores: torch.Tensor, cls_index: int, scale: torch.Tensor) -> torch.Tensor:
    """Artefact guard from the detector itself, in object units: uncertain mass of the class (s(1-s) peaks at
    0.5, where fragments and smears score) plus every other class's mass (stray objects of another kind)."""
    mine = scores[:, cls_index]
    uncertain = (mine * (1 - mine)).sum(-1)
    others = scores.sum(1).sum(-1) - mine.sum(-1)
    return (uncertain + others) / scale


class CountingLoss:
    """Step 4 of an iteration, shared by token and noise optimization: the count loss with the paper's dynamic
    scale (the potential, or its expectation over transformation) plus the guard, per image; it remembers the
    last scale for images where nothing is detected."""

    def __init__(self, counter: Counter, cls: str, target: int, config: OptimizeConfig, guard: Guard,
                 fallback_scale: float = 1.0):
        self.counter, self.cls_index, self.target = counter, counter.classes.index(cls), target
        self.config, self.guard, self.fallback_scale = config, guard, fallback_scale
        self.generator = torch.Generator().manual_seed(config.seed)

    def __call__(self, images: torch.Tensor, raw: torch.Tensor, detected: list[int]):
        """(count loss, count loss + guard, scale), each per image."""
        scores = self.counter.class_scores(raw)
        potential = class_potential(self.counter, images, scores, self.cls_index, self.config.eot_samples,
                                    self.generator)
        loss_count, scale = count_loss(potential, detected, self.target, self.fallback_scale)
        if any(detected):
            self.fallback_scale = float(scale[torch.tensor(detected) > 0].mean())
        return loss_count, loss_count + self.config.guard_weight * self.guard(images, scores, self.cls_index, scale), scale
