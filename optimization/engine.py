"""``CountEngine``: verified images of exactly N objects, within a budget.

The product promises verified images, not magic tokens. ``generate`` reads in the order of its stages:

1. check the inputs (count range, object, policy, budget, token identity) and
2. write the count into the prompt (``prompts.with_count``) and, for token policies, the placeholder: both
   when a request becomes a ``job.JobState``;
3. sample candidates in batches (seeds derived from the job's seed, so a repeated request gives the same
   images), conditioned on the library token when the policy uses it, and verify each conservatively;
4. ``refine`` and ``noise`` only: optimize the token, or the initial noise, of the nearest misses until one
   is verified or the budget ends (in the share of the budget the policy reserves for it);
5. return verified images first, then the closest misses marked ``verified: false``.

Policies: ``resample`` (base prompt), ``library`` (the cached token for (model, object, count) when there
is one), ``refine`` (library, plus token refinement), ``noise`` (library, plus noise optimization).
Library tokens are learned by ``library`` (calibration, then the gradient token, in slices). The default is
the model's ``default_policy``, else ``policy.DEFAULT_POLICY`` (``policy.default_for``; the winner of ``tally bench
engine``). Everything particular to a model (its sampler, verification thresholds, cross-check, library prompts,
max count) comes from its ``ModelSpec``.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable

import numpy as np
import torch

from .config import GENERATION_BATCH, Budget, ModelSpec, NoiseConfig, Policy, RefineConfig, Stage
from .count_token import CountToken, TokenKey
from .counter import Counter, Detections, Verification, degenerate, load_counter, load_crosscheck, resolve, verify
from .errors import DegenerateOutput, InvalidRequest
from .job import Candidate, EngineResult, GenerationRequest, ImageResult, JobState
from .noise import optimize_noise
from .optimizer import Canceled, IterationReport, OptimizeResult, optimize
from .pipelines import TOKEN_NORM_FACTOR, TextToImage
from .policy import default_for
from .prompts import object_in_prompt, plural, tokenizer_warnings, with_count
from .semantic import ClipGuard
from .visualize import to_uint8

class CountEngine:
    """Resident pipeline + counter (+ an independent cross-check, where configured) answering count requests."""

    def __init__(self, t2i: TextToImage, counter: Counter, spec: ModelSpec,
                 crosscheck: Callable[[np.ndarray], int] | None = None, refine_config: RefineConfig = RefineConfig(),
                 semantic: ClipGuard | None = None, noise_config: NoiseConfig = NoiseConfig()):
        self.t2i = t2i
        self.counter = counter
        self.spec = spec
        self.crosscheck = crosscheck
        self.refine_config = refine_config
        self.noise_config = noise_config.model_copy(update={"reserve": refine_config.reserve})  # one reserve
        self.semantic = semantic  # the CLIP guard of token optimization, where the model configures one
        # Seconds per image of the last batch sampled, kept across calls: a job with a deadline fits its first
        # batch to it too (0 until this engine has sampled once: that first batch takes its full share).
        self.image_seconds = 0.0

    @classmethod
    def from_spec(cls, spec: ModelSpec, refine_config: RefineConfig = RefineConfig(),
                  noise_config: NoiseConfig = NoiseConfig()) -> "CountEngine":
        """Load the model entry's pipeline, counter, cross-check and semantic guard once."""
        guard = spec.semantic_guard
        semantic = ClipGuard(guard.clip, guard.weight, spec.device) if guard else None
        return cls(TextToImage.from_spec(spec), load_counter(spec), spec, load_crosscheck(spec.crosscheck),
                   refine_config, semantic, noise_config)

    @property
    def _semantic_penalty(self):
        return self.semantic.penalty if self.semantic else None

    @property
    def max_count(self) -> int:
        return self.spec.max_count

    @property
    def default_policy(self) -> Policy:
        return default_for(self.spec)

    def detector_only(self) -> "CountEngine":
        """The same resident models verifying with the detector alone (as production models do)."""
        view = copy.copy(self)
        view.crosscheck = None
        return view

    # ----------------------------------------------------------------------------------------- checks
    def resolve_object(self, prompt: str, object_: str | None) -> str:
        return resolve(self.counter, object_) if object_ else object_in_prompt(prompt, self.counter.classes)

    def prompt_warnings(self, prompt: str, cls: str, count: int) -> list[str]:
        """What the model's tokenizers would split in the prompt as the engine writes it (the count written in)."""
        return tokenizer_warnings(with_count(prompt, cls, count), [tokenizer for _, tokenizer, _ in self.t2i.encoders()])

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
            self.check_token(token)
        return cls

    def check_token(self, token: CountToken) -> None:
        """A token this model can use: every vector finite and within the norm its encoder's words have
        (``TextToImage.token_norm_bounds``); InvalidRequest says which vector is not."""
        for name, vector in token.vectors.items():
            bound = self.t2i.token_norm_bounds.get(name)
            if bound is None:
                raise InvalidRequest(f"the token has a {name} vector; this model's encoders are "
                                     f"{', '.join(self.t2i.token_norm_bounds)}")
            norm = float(vector.float().norm())
            if not math.isfinite(norm) or norm > bound:
                raise InvalidRequest(f"the token's {name} vector has norm {norm:.3g}; this model's tokens stay "
                                     f"below {bound:.3g} ({TOKEN_NORM_FACTOR:g} x its longest word embedding)")

    def verify_images(self, images: torch.Tensor, detections: list[Detections], cls: str, target: int) -> list[Verification]:
        cross = [self.crosscheck(im) for im in to_uint8(images)] if self.crosscheck else [None] * len(images)
        return [verify(d, cls, target, self.counter.config, c, degenerate=bad)
                for d, c, bad in zip(detections, cross, degenerate(images))]

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
        """One request; raises ``InvalidRequest`` for bad input and ``Canceled`` when ``should_stop`` says so."""
        outcome = self.generate_many([GenerationRequest(prompt, count, object_, num_images, seed, budget, policy,
                                                        token, progress, should_stop)])[0]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def generate_many(self, requests: list[GenerationRequest],
                      batch_size: int = GENERATION_BATCH) -> list[EngineResult | Exception]:
        """Several requests sharing the pipeline's batches (cross-job batching): candidates of requests with the
        same conditioning token are generated together, up to ``batch_size`` images per call, each verified
        against its own object and count; every request keeps its own seeds, budget, cancellation, progress
        and outcome (a result, or the exception that ended it). Refinement, when a policy asks for it, runs
        per request afterwards. One request alone samples exactly as it always has."""
        jobs: list[JobState] = []
        for request in requests:
            try:  # 1-2. check inputs, write the prompts
                jobs.append(JobState(self, request))
            except Exception as exc:  # noqa: BLE001 - that request's outcome
                jobs.append(JobState.failed(exc))
        self._sample_together(jobs, batch_size)  # 3.
        outcomes: list[EngineResult | Exception] = []
        for job in jobs:
            if job.error is None:
                try:
                    if job.policy.optimizes:  # 4.
                        self._optimize_misses(job)
                    outcomes.append(self._result(job))  # 5.
                    continue
                except Exception as exc:  # noqa: BLE001
                    job.error = exc
            outcomes.append(job.error)
        return outcomes

    def _sample_together(self, jobs: list[JobState], batch_size: int) -> None:
        """Stage 3: sample candidates in batches and verify each conservatively, until each job has its
        verified images or its budget ends (one batch at least). Alone, a job takes ``job.CANDIDATE_BATCH``
        candidates a batch; several share a batch fairly (at least one candidate each per batch). Near a deadline
        the whole batch is cut to what fits before the earliest one, at the last measured pace: a job waits for
        its companions' images too."""
        while True:
            for job in jobs:
                if job.error is None and job.wants() and job.should_stop():
                    job.error = Canceled()
            active = [j for j in jobs if j.error is None and j.wants()]
            if not active:
                return
            # The text encoder holds one count token at a time: a batch shares one (or none).
            group = [j for j in active if j.token_id == active[0].token_id]
            room = min(batch_size, max(len(group), min(j.fits(self.image_seconds) for j in group)))
            share = max(1, room // len(group))
            batch: list[tuple[JobState, list[int]]] = []
            for job in group:
                n = min(job.wants(), share, room)
                if n > 0:
                    batch.append((job, job.take(n)))
                    room -= n
            began = time.perf_counter()
            try:
                if group[0].token_id:
                    self.t2i.set_token(group[0].request.token.vectors)
                prompts = [j.sample_text for j, seeds in batch for _ in seeds]
                seeds = [s for _, ss in batch for s in ss]
                images = (self.t2i.generate(prompts[0], seeds) if len(set(prompts)) == 1
                          else self.t2i.generate_each(prompts, seeds))
                detections = self.counter.detect(images)
            except Exception as exc:  # noqa: BLE001 - the requests of this batch end with it
                for job, _ in batch:
                    job.error = exc
                continue
            start = 0
            for job, job_seeds in batch:
                part = slice(start, start + len(job_seeds))
                job.add(job_seeds, images[part], self.verify_images(images[part], detections[part], job.cls, job.count))
                start += len(job_seeds)
            took = time.perf_counter() - began
            self.image_seconds = took / len(seeds)
            for job, job_seeds in batch:  # each job pays its share of the batch, so batching costs it no budget
                job.spent += took * len(job_seeds) / len(seeds)
                job.cost["sampling_seconds"] += took * len(job_seeds) / len(seeds)

    def _optimize_misses(self, job: JobState) -> None:
        """Stage 4: optimize the nearest misses — the count token (``refine``) or the initial noise (``noise``) —
        until enough are verified or the budget ends."""
        request, budget, cost = job.request, job.request.budget, job.cost
        start_vectors = request.token.vectors if job.use_token else self.word_vectors(job.init_word)
        for miss in sorted((c for c in job.misses if not c.verification.degenerate), key=lambda c: c.verification.miss):
            left_s = job.seconds_left()
            left_it = budget.max_iterations - cost["iterations"]
            if len(job.verified) >= request.num_images or left_s <= 0 or left_it <= 0:
                break
            progress = lambda r: job.events(self._refine_event(r, cost, job.verified_so_far()))  # noqa: E731
            if job.policy == Policy.noise:
                config = self.noise_config.model_copy(update={"max_iterations": left_it, "max_seconds": left_s})
                if job.token_id:
                    self.t2i.set_token(request.token.vectors)
                result = self.refine_noise(job.sample_text, job.cls, job.count, miss.seed, config, progress,
                                           request.should_stop)
            else:
                config = self.refine_config.model_copy(update={"max_iterations": left_it, "max_seconds": left_s})
                result = self.refine(job.token_text, job.cls, job.count, miss.seed, start_vectors, config,
                                     progress=progress, should_stop=request.should_stop)
            cost["iterations"] += result.iterations + (1 if result.hit else 0)
            cost["optimizing_seconds"] += result.seconds
            job.spent += result.seconds
            if result.hit:
                job.misses.remove(miss)  # its optimized image replaces it
                job.verified.append(Candidate(result.hit.seed, result.hit.image, result.hit.verification,
                                               result.hit.iteration))

    def _result(self, job: JobState) -> EngineResult:
        """Stage 5: verified images first, then the closest misses."""
        job.cost["seconds"] = round(job.spent, 3)
        for stage in ("sampling_seconds", "optimizing_seconds"):
            job.cost[stage] = round(job.cost[stage], 3)
        wanted = job.request.num_images
        closest = sorted((c for c in job.misses if not c.verification.degenerate), key=lambda c: c.verification.miss)
        chosen = job.verified[:wanted] + closest[:max(0, wanted - len(job.verified))]
        if not chosen and job.misses:
            raise DegenerateOutput(f"all {len(job.misses)} candidate images were degenerate (not finite, or one "
                                   "flat colour): the model or its token is broken")
        key = self.token_key(job.cls, job.count)
        images = [ImageResult(c.image, c.seed, c.verification, job.policy,
                              f"refined:{key.id}" if c.iteration is not None else c.token, c.iteration,
                              c.stated)
                  for c in chosen]
        job.events({"stage": Stage.verifying, "candidates": job.cost["candidates"], "iterations": job.cost["iterations"],
                    "images_verified": sum(r.verified for r in images)})
        return EngineResult(job.text, job.cls, job.count, job.policy, images, job.cost, key,
                            library_hit=job.request.token is not None)

    def refine(self, token_prompt: str, cls: str, count: int, seed: int, start: dict[str, torch.Tensor],
               config: RefineConfig, progress: Callable[[IterationReport], None] | None = None,
               should_stop: Callable[[], bool] | None = None) -> OptimizeResult:
        """The paper's setting: optimize the token on one seed until its image is verified."""
        return optimize(self.t2i, self.counter, token_prompt, cls, count, start, lambda _it: [seed], config,
                        verifier=lambda ims, dets: self.verify_images(ims, dets, cls, count),
                        progress=progress, should_stop=should_stop, semantic=self._semantic_penalty)

    def refine_noise(self, prompt: str, cls: str, count: int, seed: int, config: NoiseConfig,
                     progress: Callable[[IterationReport], None] | None = None,
                     should_stop: Callable[[], bool] | None = None) -> OptimizeResult:
        """ReNO's setting: optimize one seed's initial noise until its image is verified."""
        return optimize_noise(self.t2i, self.counter, prompt, cls, count, seed, config,
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
    def library_prompts(self, cls: str, count: int, stated: int | str | None = None) -> list[str]:
        """The prompts a library token for (cls, count) learns on, from the model's configuration, stating
        ``stated`` (default: the count; a number or the model's crowd word) as the number."""
        return self.spec.library_texts(plural(cls) if count > 1 else cls, stated or count)
