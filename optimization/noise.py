"""Noise optimization (ReNO-style, Eyring et al. 2024): the initial latent of one seed optimized against the
counting loss, kept where a Gaussian's norm lies, until its image is verified."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from .config import NoiseConfig
from .count_loss import CountingLoss, Guard, detector_guard
from .counter import Counter, count
from .optimizer import Canceled, Hit, IterationReport, OptimizeResult, Verifier, step
from .pipelines import TextToImage


def gaussian_shell(latents: torch.Tensor) -> torch.Tensor:
    """Per image, (|z|^2 / d - 1)^2: zero where a standard Gaussian's norm lies, so optimized noise stays noise the
    denoiser knows (ReNO keeps the norm the same way) instead of drifting to what only fools the counter."""
    d = latents[0].numel()
    return (latents.pow(2).flatten(1).sum(1) / d - 1).pow(2)


def optimize_noise(
    t2i: TextToImage,
    counter: Counter,
    prompt: str,
    cls: str,
    target: int,
    seed: int,
    config: NoiseConfig,
    verifier: Verifier,
    guard: Guard = detector_guard,
    progress: Callable[[IterationReport], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> OptimizeResult:
    """Optimize the initial noise of one seed towards ``target`` objects of ``cls`` (ReNO-style), stopping at the
    first verified image. The prompt is generated as the pipeline holds it (a library token stays in its slot);
    the loss is the count loss of ``optimize`` plus its guard plus ``norm_weight`` x ``gaussian_shell``."""
    torch.manual_seed(config.seed)
    latents = t2i.initial_latents([seed]).to(t2i.device).requires_grad_(True)
    opt = torch.optim.AdamW([latents], lr=config.lr, weight_decay=0.0)
    counting = CountingLoss(counter, cls, target, config, guard)
    started = time.perf_counter()
    result = OptimizeResult(vectors={}, iterations=0, seconds=0.0)
    for iteration in range(config.max_iterations):
        if should_stop and should_stop():
            raise Canceled()
        if config.max_seconds is not None and time.perf_counter() - started >= config.max_seconds:
            break
        images = t2i.generate_differentiable(prompt, [seed], latents=latents)
        raw = counter.raw(images)
        detections = counter.detections_from_raw(raw, tuple(images.shape[-2:]))
        detected = [count(counter, d, cls) for d in detections]
        verdict = verifier(images.detach().cpu(), detections)[0]
        if verdict.verified:
            result.hit = Hit(seed, images[0].detach().cpu(), verdict, iteration)
            break
        loss_count, loss, scale = counting(images, raw, detected)
        loss = (loss + config.norm_weight * gaussian_shell(latents)).mean()
        step(opt, loss, result, iteration, loss_count, detected, scale, started, progress)
    result.seconds = time.perf_counter() - started
    return result
