"""The count-token optimizer (Zafar, Wolf, Schwartz 2024): AdamW on the token embedding alone, through
differentiable generations, against a counting loss from the detector.

One iteration:
1. generate the iteration's seeds with the token live (gradients reach only the token's vectors);
2. run the detector once: raw predictions give the differentiable potential, NMS on the same predictions
   gives the detected count;
3. (refine) if an image is already verified, stop: that image is the answer;
4. loss = |potential / scale - target| with scale = potential.detach() / detected count, so the loss value
   equals the detector's count error and its gradient comes from the potential; plus a guard that makes
   fooling the counter expensive, plus optional L2 to the initial embedding;
5. step.

Two uses of one loop: ``refine`` (the seeds of one job, until verified) and ``library`` (fresh seeds every
iteration, validated on disjoint seeds, the best validated token kept).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from .config import LibraryConfig, OptimizeConfig
from .count_loss import CountingLoss, Guard, detector_guard
from .counter import Counter, Detections, Verification, count
from .pipelines import TextToImage
from .seeds import LIBRARY_ADMISSION, LIBRARY_TRAIN, LIBRARY_VALIDATION


class Canceled(Exception):
    """Raised between iterations when the caller's ``should_stop`` says so."""


@dataclass
class IterationReport:
    iteration: int
    loss: float
    detected_counts: list[int]
    scale: float
    elapsed: float


@dataclass
class Hit:
    """A verified image found while refining."""

    seed: int
    image: torch.Tensor
    verification: Verification
    iteration: int


@dataclass
class OptimizeResult:
    vectors: dict[str, torch.Tensor]
    iterations: int
    seconds: float
    history: list[IterationReport] = field(default_factory=list)
    hit: Hit | None = None
    validation: dict | None = None
    done: bool = True  # False: a slice ended before the run did; ``state`` resumes it
    state: dict | None = None

    def summary(self) -> dict:
        return {"iterations": self.iterations, "seconds": round(self.seconds, 2), "validation": self.validation,
                "final_loss": self.history[-1].loss if self.history else None}


Verifier = Callable[[torch.Tensor, list[Detections]], list[Verification]]
Semantic = Callable[[torch.Tensor, str], torch.Tensor]  # (images, prompt) -> penalty per image, e.g. ClipGuard


def step(opt: torch.optim.Optimizer, loss: torch.Tensor, result: "OptimizeResult", iteration: int,
          loss_count: torch.Tensor, detected: list[int], scale: torch.Tensor, started: float,
          progress: Callable[["IterationReport"], None] | None) -> None:
    """Step 5: the optimizer step, then the iteration's report (history and progress)."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    result.iterations = iteration + 1
    report = IterationReport(iteration + 1, round(loss_count.detach().mean().item(), 4), detected,
                             round(float(scale.mean()), 3), round(time.perf_counter() - started, 3))
    result.history.append(report)
    if progress:
        progress(report)


def optimize(
    t2i: TextToImage,
    counter: Counter,
    prompt: str | list[str],
    cls: str,
    target: int,
    init: dict[str, torch.Tensor],
    seeds_for: Callable[[int], list[int]],
    config: OptimizeConfig,
    verifier: Verifier | None = None,
    guard: Guard = detector_guard,
    validation_seeds: list[int] | None = None,
    progress: Callable[[IterationReport], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    resume: dict | None = None,
    slice_seconds: float | None = None,
    prior_seconds: float = 0.0,
    semantic: Semantic | None = None,
    should_yield: Callable[[], bool] | None = None,
) -> OptimizeResult:
    """Optimize a count token towards ``target`` objects of ``cls``.

    A ``LibraryConfig`` learns a reusable token (validated, best kept); any other config refines: with a
    ``verifier`` it stops at the first verified image.

    ``prompt`` holds the placeholder; a list of prompts (e.g. one per colour) is cycled over iterations, so a
    library token learns the count rather than one phrasing.

    Slices: with ``slice_seconds`` the run stops before an iteration that would end past that time (judged
    by the last iteration, validation included; a slice runs one iteration at least) and returns
    ``result.state``; passing that state back as ``resume`` continues exactly where it stopped
    (token, AdamW moments, best validated token), so background learning never holds a worker for long.
    ``should_yield``: with ``slice_seconds``, the slice also ends before the next iteration once it says so (a
    user job waits for the worker). ``prior_seconds``: time already spent on the run before it (e.g.
    calibration), counted in ``max_seconds``.
    ``semantic``: a penalty per image against the iteration's prompt (``ClipGuard.penalty``), added to the loss.
    """
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    run = _TokenRun.start(t2i, counter, prompts, cls, target, init, config, guard, validation_seeds, resume,
                          prior_seconds)
    for iteration in range(run.first, config.max_iterations):
        if should_stop and should_stop():
            raise Canceled()
        validates = run.library and bool(validation_seeds) and (iteration + 1) % config.validate_every == 0
        if run.ends_before(iteration, validates, slice_seconds, should_yield):
            break
        iteration_started = time.perf_counter()
        seeds = seeds_for(iteration)
        prompt_now = prompts[iteration % len(prompts)]
        images = t2i.generate_differentiable(prompt_now, seeds, run.params)
        raw = counter.raw(images)
        detections = counter.detections_from_raw(raw, tuple(images.shape[-2:]))
        detected = [count(counter, d, cls) for d in detections]
        if not run.library and verifier is not None and run.found_hit(seeds, images, verifier(
                images.detach().cpu(), detections), iteration):
            break
        penalty = (lambda im: semantic(im, prompt_now)) if semantic is not None else None
        loss_count, loss, scale = run.loss(images, raw, detected, penalty)
        step(run.opt, loss, run.result, iteration, loss_count, detected, scale, run.started, progress)
        run.step_s = time.perf_counter() - iteration_started
        if validates:
            run.validate(iteration, validation_seeds)
            run.validation_s = time.perf_counter() - iteration_started - run.step_s
    return run.finish()


@dataclass
class _TokenRun:
    """One run (or slice) of ``optimize``: its token, AdamW, loss and best validated token, by phase."""

    t2i: TextToImage
    counter: Counter
    prompts: list[str]
    cls: str
    target: int
    config: OptimizeConfig
    params: dict[str, torch.Tensor]
    anchor: dict[str, torch.Tensor]
    opt: torch.optim.Optimizer
    counting: CountingLoss
    result: OptimizeResult
    first: int = 0
    best_validation: dict | None = None
    prior_s: float = 0.0  # a budget in seconds covers every slice of a run
    step_s: float = 0.0  # the last iteration's cost, and the last validation's, to plan slices
    validation_s: float = 0.0
    started: float = field(default_factory=time.perf_counter)

    @property
    def library(self) -> bool:
        return isinstance(self.config, LibraryConfig)

    def loss(self, images: torch.Tensor, raw: torch.Tensor, detected: list[int],
             semantic: Callable[[torch.Tensor], torch.Tensor] | None):
        """Step 4: (count loss per image, the loss to step on, scale): the counting loss and its guard, the
        semantic penalty, the L2 pull to the initial embedding."""
        loss_count, loss, scale = self.counting(images, raw, detected)
        if semantic is not None:
            loss = loss + semantic(images)
        loss = loss.mean()
        if self.config.l2_weight:
            loss = loss + self.config.l2_weight * sum(((self.params[k] - self.anchor[k]) ** 2).sum() for k in self.params)
        return loss_count, loss, scale

    @staticmethod
    def start(t2i, counter, prompts, cls, target, init, config, guard, validation_seeds, resume,
              prior_seconds) -> "_TokenRun":
        torch.manual_seed(config.seed)
        begin = resume["vectors"] if resume else init
        params = {k: v.detach().clone().float().to(t2i.device).requires_grad_(True) for k, v in begin.items()}
        run = _TokenRun(t2i, counter, prompts, cls, target, config, params,
                        anchor={k: v.detach().clone().float().to(t2i.device) for k, v in init.items()},
                        # no weight decay: it would pull the token back toward its starting word
                        opt=torch.optim.AdamW(params.values(), lr=config.lr, weight_decay=0.0),
                        counting=CountingLoss(counter, cls, target, config, guard,
                                              resume["fallback_scale"] if resume else 1.0),
                        result=OptimizeResult(vectors=init, iterations=0, seconds=0.0),
                        prior_s=resume["seconds"] if resume else prior_seconds)
        if resume:
            run.opt.load_state_dict(resume["adam"])
            run.first = resume["iteration"]
            run.result.vectors, run.result.validation = resume["best_vectors"], resume["validation"]
            run.best_validation = resume["validation"]["token"] if resume["validation"] else None
        elif run.library and validation_seeds:  # the untrained token is the first candidate to keep
            run.best_validation = evaluate_token(t2i, counter, prompts, cls, target, params, validation_seeds)
            run.validation_s = time.perf_counter() - run.started
            run.result.validation = {"base": run.best_validation, "token": run.best_validation, "best_iteration": 0}
            run.result.vectors = _detached(params)
        run.result.iterations = run.first
        return run

    def ends_before(self, iteration: int, validates: bool, slice_seconds: float | None,
                    should_yield: Callable[[], bool] | None) -> bool:
        """Out of seconds, or (a slice, past its first iteration) the next one would end past the slice or a
        user job waits."""
        elapsed = time.perf_counter() - self.started
        if self.config.max_seconds is not None and self.prior_s + elapsed >= self.config.max_seconds:
            return True
        if slice_seconds is None or iteration == self.first:
            return False
        return (elapsed + self.step_s + (self.validation_s if validates else 0.0) > slice_seconds
                or (should_yield is not None and should_yield()))

    def found_hit(self, seeds: list[int], images: torch.Tensor, verdicts, iteration: int) -> bool:
        for seed, image, verdict in zip(seeds, images, verdicts):
            if verdict.verified:
                self.result.hit = Hit(seed, image.detach().cpu(), verdict, iteration)
                self.result.vectors = _detached(self.params)
                return True
        return False

    def validate(self, iteration: int, validation_seeds: list[int]) -> None:
        """Held-out score of the token now; kept if it beats the best so far (the untrained token included)."""
        score = evaluate_token(self.t2i, self.counter, self.prompts, self.cls, self.target, self.params,
                               validation_seeds)
        validation = self.result.validation
        gradient = validation.get("gradient")  # the best trained token, kept or not
        if gradient is None or (score["exact"], -score["mae"]) > (gradient["exact"], -gradient["mae"]):
            validation["gradient"] = score
        if (score["exact"], -score["mae"]) > (self.best_validation["exact"], -self.best_validation["mae"]):
            self.best_validation = score
            self.result.vectors = _detached(self.params)
            validation.update(token=score, best_iteration=iteration + 1)

    def finish(self) -> OptimizeResult:
        result, config = self.result, self.config
        if not self.library and result.hit is None:
            result.vectors = _detached(self.params)
        result.seconds = time.perf_counter() - self.started + self.prior_s
        result.done = result.hit is not None or result.iterations >= config.max_iterations or (
            config.max_seconds is not None and result.seconds >= config.max_seconds)
        result.state = {"vectors": _detached(self.params), "adam": self.opt.state_dict(),
                        "fallback_scale": self.counting.fallback_scale, "iteration": result.iterations,
                        "best_vectors": result.vectors, "validation": result.validation, "seconds": result.seconds}
        return result


def _detached(params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in params.items()}


def gain(validation: dict | None) -> float:
    """Held-out exact rate the kept token adds over the base prompt (0 when it kept the start), on the admission
    seeds where learning measured it there (``admission_seeds``)."""
    if not validation:
        return 0.0
    figures = validation.get("admission", validation)
    return round(figures["token"]["exact"] - figures["base"]["exact"], 4)


def gain_p(validation: dict | None) -> float:
    """The admission gain's one-sided p-value (``gain_p_value``); 1.0 where it was not measured."""
    return (validation or {}).get("admission", {}).get("p_value", 1.0)


def gain_p_value(base_exact: np.ndarray, token_exact: np.ndarray) -> float:
    """One-sided exact sign test (McNemar) of a gain on paired seeds: among the seeds where exactly one of the
    two prompts is exact, the chance of at least this many token-only hits if neither were better. The same
    seed is the same initial noise for both, so only the discordant seeds say anything."""
    token_only = int((token_exact & ~base_exact).sum())
    discordant = token_only + int((base_exact & ~token_exact).sum())
    # not rounded: a gate of p <= 0 must refuse everything, and a tiny p rounded to 0 would pass it
    return sum(math.comb(discordant, k) for k in range(token_only, discordant + 1)) / 2 ** discordant


@torch.no_grad()
def token_counts(t2i: TextToImage, counter: Counter, prompts: list[str], cls: str,
                 vectors: dict[str, torch.Tensor], seeds: list[int]) -> np.ndarray:
    """The detector count of each seed's image (in ``seeds``' order; the seeds shared round-robin among
    ``prompts``) with ``vectors`` as the token, no gradients."""
    t2i.set_token({k: v.detach() for k, v in vectors.items()})
    counts = np.zeros(len(seeds), dtype=int)
    for i, prompt in enumerate(prompts):
        share = seeds[i::len(prompts)]
        if not share:  # fewer seeds than prompts
            continue
        images = t2i.generate(prompt, share)
        counts[i::len(prompts)] = [count(counter, d, cls) for d in counter.detect(images)]
    return counts


def exact_figures(counts: np.ndarray, target: int) -> dict:
    return {"exact": round(float((counts == target).mean()), 4), "mae": round(float(np.abs(counts - target).mean()), 4),
            "n": len(counts)}


def evaluate_token(t2i: TextToImage, counter: Counter, prompts: list[str], cls: str, target: int,
                   vectors: dict[str, torch.Tensor], seeds: list[int]) -> dict:
    """Exact rate and MAE of the detector count over ``seeds`` with ``vectors`` as the token."""
    return exact_figures(token_counts(t2i, counter, prompts, cls, vectors, seeds), target)


def library_seeds(config: LibraryConfig) -> tuple[Callable[[int], list[int]], list[int]]:
    """Fresh training seeds per iteration and a disjoint validation set, both derived from ``config.seed``."""
    base = LIBRARY_TRAIN + config.seed * 100_000

    def seeds_for(iteration: int) -> list[int]:
        return [base + iteration * config.seeds_per_iteration + j for j in range(config.seeds_per_iteration)]

    validation = [LIBRARY_VALIDATION + config.seed * 10_000 + j for j in range(config.validation_seeds)]
    return seeds_for, validation


def admission_seeds(config: LibraryConfig) -> list[int]:
    """Seeds of the admission gate, as many as validation's and disjoint from them: validation chose the kept
    token among several, so its own figures flatter it (the winner's curse)."""
    return [LIBRARY_ADMISSION + config.seed * 10_000 + j for j in range(config.validation_seeds)]


def calibration_seeds(config: LibraryConfig) -> list[int]:
    """Seeds of stated-number calibration: in the training range, past every iteration's seeds."""
    return [LIBRARY_TRAIN + config.seed * 100_000 + 90_000 + j for j in range(config.calibration_seeds)]
