"""``CountEngine``: verified images of exactly N objects, within a budget.

The product promises verified images, not magic tokens. ``generate`` reads in the order of its stages:

1. check the inputs (count range, object, policy, budget, token identity);
2. write the count into the prompt (``prompts.with_count``) and, for token policies, the placeholder;
3. sample candidates in batches (seeds derived from the job's seed, so a repeated request gives the same
   images), conditioned on the library token when the policy uses it, and verify each conservatively;
4. ``refine`` only: optimize the token on the nearest misses until one is verified or the budget ends;
5. return verified images first, then the closest misses marked ``verified: false``.

Policies: ``resample`` (base prompt), ``library`` (the cached token for (model, object, count) when there
is one), ``refine`` (library, plus refinement). The default is the model's ``default_policy``, else
``policy.DEFAULT_POLICY`` (the winner of ``tally bench engine``). Everything particular to a model (its
sampler, verification thresholds, cross-check, library prompts, max count) comes from its ``ModelSpec``.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .config import Budget, LibraryConfig, ModelSpec, Policy, RefineConfig, Stage
from .count_token import CountToken, TokenKey, place_token
from .counter import Counter, Detections, Verification, load_counter, load_crosscheck, resolve, verify
from .errors import InvalidRequest
from .optimizer import Canceled, IterationReport, OptimizeResult, gain, library_seeds, optimize
from .pipelines import TextToImage
from .policy import DEFAULT_POLICY
from .prompts import object_in_prompt, plural, with_count
from .visualize import to_uint8

CANDIDATE_BATCH = 8


@dataclass
class ImageResult:
    image: torch.Tensor  # [3, H, W] in [0, 1]
    seed: int
    verification: Verification
    policy: str
    token: str | None  # the token key used, "refined:<key>" after refinement, None for the base prompt
    iteration: int | None = None  # refinement iteration that produced it

    @property
    def verified(self) -> bool:
        return self.verification.verified

    def to_dict(self) -> dict:
        return {"seed": self.seed, **self.verification.to_dict(), "policy": self.policy, "token": self.token,
                "refine_iteration": self.iteration}


@dataclass
class EngineResult:
    prompt: str
    object: str
    count: int
    policy: str
    images: list[ImageResult]
    cost: dict
    token_key: TokenKey
    library_hit: bool

    def to_dict(self) -> dict:
        return {"prompt": self.prompt, "object": self.object, "count": self.count, "policy": self.policy,
                "token": {"key": self.token_key.id, "library_hit": self.library_hit},
                "images": [r.to_dict() for r in self.images], "cost": self.cost,
                "budget_exhausted": self.budget_exhausted}

    @property
    def budget_exhausted(self) -> bool:
        """The budget ran out before as many verified images as asked were found."""
        return not all(r.verified for r in self.images)


@dataclass
class _Candidate:
    seed: int
    image: torch.Tensor
    verification: Verification
    iteration: int | None = None  # set when token refinement produced it


SEED_STRIDE = 2**32 + 15  # candidates past the first lie above every seed range in optimization.seeds


def derive_seed(job_seed: int, index: int) -> int:
    """Candidate ``index`` of a job: ``job_seed + index * SEED_STRIDE`` (mod 2**63).

    Candidate 0 is the job's seed itself, so an image's reported seed, submitted back as the job's seed with
    the same prompt, count, model and token, gives that image again as the first candidate; jobs whose seeds
    are below 2**32 share no candidates. (A refined image also needs its refined token: its seed alone is not enough.)
    """
    return (int(job_seed) + index * SEED_STRIDE) % (2**63)


class CountEngine:
    """Resident pipeline + counter (+ an independent cross-check, where configured) answering count requests."""

    def __init__(self, t2i: TextToImage, counter: Counter, spec: ModelSpec,
                 crosscheck: Callable[[np.ndarray], int] | None = None, refine_config: RefineConfig = RefineConfig()):
        self.t2i = t2i
        self.counter = counter
        self.spec = spec
        self.crosscheck = crosscheck
        self.refine_config = refine_config

    @classmethod
    def from_spec(cls, spec: ModelSpec, refine_config: RefineConfig = RefineConfig()) -> "CountEngine":
        """Load the model entry's pipeline, counter and cross-check once."""
        return cls(TextToImage.from_spec(spec), load_counter(spec), spec, load_crosscheck(spec.crosscheck),
                   refine_config)

    @property
    def max_count(self) -> int:
        return self.spec.max_count

    @property
    def default_policy(self) -> Policy:
        return self.spec.default_policy or DEFAULT_POLICY

    def detector_only(self) -> "CountEngine":
        """The same resident models verifying with the detector alone (as production models do)."""
        view = copy.copy(self)
        view.crosscheck = None
        return view

    # ----------------------------------------------------------------------------------------- checks
    def resolve_object(self, prompt: str, object_: str | None) -> str:
        return resolve(self.counter, object_) if object_ else object_in_prompt(prompt, self.counter.classes)

    def token_key(self, cls: str, count: int) -> TokenKey:
        return TokenKey(self.t2i.fingerprint, cls, count)

    def check_count(self, count: int) -> None:
        if not 1 <= count <= self.max_count:
            raise InvalidRequest(f"count must be between 1 and {self.max_count}, got {count}")

    def check_inputs(self, prompt: str, count: int, object_: str | None, num_images: int, policy: str,
                     token: CountToken | None) -> str:
        if not prompt or not prompt.strip():
            raise InvalidRequest("the prompt is empty")
        if policy not in Policy.__members__:
            raise InvalidRequest(f"unknown policy {policy!r}; allowed: {', '.join(Policy)}")
        self.check_count(count)
        if num_images < 1:
            raise InvalidRequest(f"num_images must be at least 1, got {num_images}")
        cls = self.resolve_object(prompt, object_)
        if token is not None:
            expected = self.token_key(cls, count)
            if token.key.model != expected.model:
                raise InvalidRequest(f"the token was learned for model {token.key.model}, not this model ({expected.model})")
            if (token.key.object, token.key.count) != (cls, count):
                raise InvalidRequest(f"the token is for {token.key.count} {token.key.object}, not {count} {cls}")
        return cls

    def verify_images(self, images: torch.Tensor, detections: list[Detections], cls: str, target: int) -> list[Verification]:
        cross = [self.crosscheck(im) for im in to_uint8(images)] if self.crosscheck else [None] * len(images)
        return [verify(d, cls, target, self.counter.config, c) for d, c in zip(detections, cross)]

    # ------------------------------------------------------------------------------------------ generate
    def sample(self, prompt: str, cls: str, seeds: list[int]) -> tuple[torch.Tensor, list[dict]]:
        """Plain generation of ``prompt`` as written: the images and what the detector sees of ``cls`` in each."""
        images = self.t2i.generate(prompt, seeds)
        conf = self.counter.config.count_confidence
        return images, [{"seed": s, **d.of(cls, conf).report()} for s, d in zip(seeds, self.counter.detect(images))]

    def generate(self, prompt: str, count: int, object_: str | None = None, num_images: int = 1, seed: int = 0,
                 budget: Budget = Budget(), policy: str | None = None, token: CountToken | None = None,
                 progress: Callable[[dict], None] | None = None,
                 should_stop: Callable[[], bool] | None = None) -> EngineResult:
        # 1. check inputs
        policy = policy or self.default_policy
        cls = self.check_inputs(prompt, count, object_, num_images, policy, token)
        policy = Policy(policy)
        started = time.perf_counter()
        cost = {"candidates": 0, "iterations": 0, "seconds": 0.0}
        events = progress or (lambda event: None)

        # 2. prompts: the count by the documented rule, then the placeholder for token policies
        text = with_count(prompt, cls, count)
        token_text, init_word = place_token(text, count)
        use_token = policy in (Policy.library, Policy.refine) and token is not None
        if use_token:
            self.t2i.set_token(token.vectors)
        sample_text = token_text if use_token else text
        token_label = token.key.id if use_token else None

        # 3. sample candidates and verify
        verified: list[_Candidate] = []
        misses: list[_Candidate] = []
        index = 0
        while index == 0 or (len(verified) < num_images and cost["candidates"] < budget.max_candidates
                             and time.perf_counter() - started < budget.max_seconds):  # one batch at least
            if should_stop and should_stop():
                raise Canceled()
            n = min(CANDIDATE_BATCH, budget.max_candidates - cost["candidates"])
            seeds = [derive_seed(seed, index + i) for i in range(n)]
            index += n
            images = self.t2i.generate(sample_text, seeds)
            verdicts = self.verify_images(images, self.counter.detect(images), cls, count)
            for s, image, verdict in zip(seeds, images, verdicts):
                (verified if verdict.verified else misses).append(_Candidate(s, image, verdict))
            cost["candidates"] += n
            events({"stage": Stage.sampling, "candidates": cost["candidates"], "images_verified": len(verified),
                    "detected_counts": [v.detected_count for v in verdicts]})

        # 4. refine the token on the nearest misses
        if policy == Policy.refine:
            start_vectors = token.vectors if use_token else self.word_vectors(init_word)
            for miss in sorted(misses, key=lambda c: c.verification.miss):
                left_s = budget.max_seconds - (time.perf_counter() - started)
                left_it = budget.max_iterations - cost["iterations"]
                if len(verified) >= num_images or left_s <= 0 or left_it <= 0:
                    break
                config = self.refine_config.model_copy(update={"max_iterations": left_it, "max_seconds": left_s})
                result = self.refine(token_text, cls, count, miss.seed, start_vectors, config,
                                     progress=lambda r: events(self._refine_event(r, cost, len(verified))),
                                     should_stop=should_stop)
                cost["iterations"] += result.iterations + (1 if result.hit else 0)
                if result.hit:
                    misses.remove(miss)  # its refined image replaces it
                    verified.append(_Candidate(result.hit.seed, result.hit.image, result.hit.verification,
                                               result.hit.iteration))
        cost["seconds"] = round(time.perf_counter() - started, 3)

        # 5. verified first, then the closest misses
        closest = sorted(misses, key=lambda c: c.verification.miss)
        chosen = verified[:num_images] + closest[:max(0, num_images - len(verified))]
        images = [ImageResult(c.image, c.seed, c.verification, policy,
                              f"refined:{self.token_key(cls, count).id}" if c.iteration is not None else token_label,
                              c.iteration)
                  for c in chosen]
        events({"stage": Stage.verifying, "candidates": cost["candidates"], "iterations": cost["iterations"],
                "images_verified": sum(r.verified for r in images)})
        return EngineResult(text, cls, count, policy, images, cost, self.token_key(cls, count),
                            library_hit=token is not None)

    def refine(self, token_prompt: str, cls: str, count: int, seed: int, start: dict[str, torch.Tensor],
               config: RefineConfig, progress: Callable[[IterationReport], None] | None = None,
               should_stop: Callable[[], bool] | None = None) -> OptimizeResult:
        """The paper's setting: optimize the token on one seed until its image is verified."""
        return optimize(self.t2i, self.counter, token_prompt, cls, count, start, lambda _it: [seed], config,
                        verifier=lambda ims, dets: self.verify_images(ims, dets, cls, count),
                        progress=progress, should_stop=should_stop)

    def word_vectors(self, word: str) -> dict[str, torch.Tensor]:
        try:
            return self.t2i.word_vectors(word)
        except InvalidRequest:  # a word the tokenizer splits: start from "a", which every CLIP vocabulary has whole
            return self.t2i.word_vectors("a")

    @staticmethod
    def _refine_event(report: IterationReport, cost: dict, verified: int) -> dict:
        return {"stage": Stage.refining, "candidates": cost["candidates"], "iterations": cost["iterations"] + report.iteration,
                "images_verified": verified, "loss": report.loss, "detected_counts": report.detected_counts}

    # ------------------------------------------------------------------------------------------- library
    def library_prompts(self, cls: str, count: int) -> list[str]:
        """The prompts a library token for (cls, count) learns on, from the model's configuration."""
        return self.spec.library_texts(plural(cls) if count > 1 else cls, count)

    def learn_library_token(self, cls: str, count: int, config: LibraryConfig = LibraryConfig(),
                            progress: Callable[[IterationReport], None] | None = None,
                            should_stop: Callable[[], bool] | None = None) -> CountToken:
        """Learn the reusable token for (model, cls, count) on fresh seeds; keep the best on held-out seeds."""
        return self.library_slice(cls, count, config, progress=progress, should_stop=should_stop).token

    def library_slice(self, cls: str, count: int, config: LibraryConfig = LibraryConfig(), resume: dict | None = None,
                      slice_seconds: float | None = None, progress: Callable[[IterationReport], None] | None = None,
                      should_stop: Callable[[], bool] | None = None) -> LibrarySlice:
        """Library learning in bounded slices: run about ``slice_seconds`` (all of it when None), starting from
        ``resume`` (a previous slice's ``state``); the token is the best validated one so far."""
        cls = resolve(self.counter, cls)
        self.check_count(count)
        prompts, init_word = [], "of"
        for p in self.library_prompts(cls, count):
            token_prompt, init_word = place_token(p, count)
            prompts.append(token_prompt)
        seeds_for, validation = library_seeds(config)
        result = optimize(self.t2i, self.counter, prompts, cls, count, self.word_vectors(init_word), seeds_for, config,
                          validation_seeds=validation, progress=progress, should_stop=should_stop, resume=resume,
                          slice_seconds=slice_seconds)
        metadata = {"mode": "library", "iterations": result.iterations, "seconds": round(result.seconds, 1),
                    "validation": result.validation, "gain": gain(result.validation), "config": config.model_dump(),
                    "prompts": prompts}
        return LibrarySlice(CountToken(self.token_key(cls, count), result.vectors, init_word, metadata), result.done,
                            result.state)


@dataclass
class LibrarySlice:
    token: CountToken  # the best validated token so far
    done: bool
    state: dict  # pass back as ``resume`` to continue

    def state_bytes(self) -> bytes:
        import io

        buffer = io.BytesIO()
        torch.save(self.state, buffer)
        return buffer.getvalue()

    @staticmethod
    def load_state(data: bytes) -> dict:
        import io

        return torch.load(io.BytesIO(data), weights_only=True)
