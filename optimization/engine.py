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
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .config import Budget, LibraryConfig, ModelSpec, NoiseConfig, Policy, RefineConfig, Stage
from .count_token import CountToken, TokenKey, place_token
from .counter import (Counter, Detections, Verification, degenerate, load_counter, load_crosscheck, resolve,
                      verify, count as count_of)
from .errors import DegenerateOutput, InvalidRequest
from .optimizer import (Canceled, IterationReport, OptimizeResult, calibration_seeds, evaluate_token, gain,
                        library_seeds, optimize, optimize_noise)
from .pipelines import TOKEN_NORM_FACTOR, TextToImage
from .policy import DEFAULT_POLICY
from .prompts import object_in_prompt, plural, with_count
from .semantic import ClipGuard
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


@dataclass
class GenerationRequest:
    """What ``CountEngine.generate`` takes, as one value (``generate_many`` takes several)."""
    prompt: str
    count: int
    object_: str | None = None
    num_images: int = 1
    seed: int = 0
    budget: Budget = Budget()
    policy: str | None = None
    token: CountToken | None = None
    progress: Callable[[dict], None] | None = None
    should_stop: Callable[[], bool] | None = None
    deadline: float | None = None  # time.time() by which the job must end (its start + max_seconds, batched or not)


class _Job:
    """One request's state through the stages; ``error`` ends it (its outcome then)."""

    def __init__(self, engine: CountEngine | None, request: GenerationRequest | None):
        self.error: Exception | None = None
        if engine is None:
            return
        # 1. check inputs
        self.request = request
        policy = request.policy or engine.default_policy
        self.cls = engine.check_inputs(request.prompt, request.count, request.object_, request.num_images, policy,
                                       request.token)
        self.policy = Policy(policy)
        self.count = request.count
        self.spent = 0.0  # seconds of engine time charged to this job: its share of each batch it was in
        self.cost = {"candidates": 0, "iterations": 0, "seconds": 0.0, "sampling_seconds": 0.0,
                     "optimizing_seconds": 0.0}
        self.events = request.progress or (lambda event: None)
        # 2. prompts: the count by the documented rule, then the placeholder for token policies
        self.text = with_count(request.prompt, self.cls, request.count)
        self.use_token = self.policy.uses_token and request.token is not None
        # A calibrated library token states its own number (verification still checks the count).
        stated = request.token.stated_count if self.use_token else request.count
        engine.check_count(stated)
        token_source = self.text if stated == request.count else with_count(request.prompt, self.cls, stated)
        self.token_text, self.init_word = place_token(token_source, stated)
        self.sample_text = self.token_text if self.use_token else self.text
        self.token_id = request.token.key.id if self.use_token else None
        self.verified: list[_Candidate] = []
        self.misses: list[_Candidate] = []
        self.index = 0
        reserve = engine.refine_config.reserve if self.policy.optimizes else 0.0
        self.sampling_seconds = request.budget.max_seconds * (1 - reserve)
        self.sampling_deadline = None  # the reserve is also a share of the wall time left to the deadline
        if request.deadline is not None:
            self.sampling_deadline = request.deadline - reserve * max(0.0, request.deadline - time.time())

    @classmethod
    def failed(cls, error: Exception) -> _Job:
        job = cls(None, None)
        job.error = error
        return job

    def should_stop(self) -> bool:
        return bool(self.request.should_stop and self.request.should_stop())

    def wants(self) -> int:
        """Candidates it would take now: a batch at first, then until verified, out of candidates or out of its
        sampling time — its share of the machine, or the wall clock where the request has a deadline (a policy
        that optimizes leaves ``reserve`` of its seconds to optimization)."""
        budget, done = self.request.budget, self.cost["candidates"]
        late = self.sampling_deadline is not None and time.time() >= self.sampling_deadline
        if self.index and (len(self.verified) >= self.request.num_images or done >= budget.max_candidates
                           or self.spent >= self.sampling_seconds or late):
            return 0
        return max(0, min(CANDIDATE_BATCH, budget.max_candidates - done))

    def fits(self, image_seconds: float) -> int:
        """Candidates that fit before its sampling deadline at ``image_seconds`` each (one at least; no limit
        without a deadline or a measured pace): a batch never carries a job far past its budget."""
        if self.sampling_deadline is None or image_seconds <= 0:
            return CANDIDATE_BATCH * 64
        return max(1, int((self.sampling_deadline - time.time()) / image_seconds))

    def seconds_left(self) -> float:
        """Of its budget: the charged seconds left, and no more than the wall clock leaves before its deadline."""
        left = self.request.budget.max_seconds - self.spent
        if self.request.deadline is not None:
            left = min(left, self.request.deadline - time.time())
        return left

    def take(self, n: int) -> list[int]:
        seeds = [derive_seed(self.request.seed, self.index + i) for i in range(n)]
        self.index += n
        return seeds

    def add(self, seeds: list[int], images: torch.Tensor, verdicts: list[Verification]) -> None:
        for s, image, verdict in zip(seeds, images, verdicts):
            (self.verified if verdict.verified else self.misses).append(_Candidate(s, image, verdict))
        self.cost["candidates"] += len(seeds)
        self.events({"stage": Stage.sampling, "candidates": self.cost["candidates"],
                     "images_verified": self.verified_so_far(), "detected_counts": [v.detected_count for v in verdicts]})

    def verified_so_far(self) -> int:
        """Verified images of those asked for: a batch may verify more than asked, and the job returns only the
        asked number, so progress counts them capped (it never goes back at the end)."""
        return min(len(self.verified), self.request.num_images)


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
                      batch_size: int = 2 * CANDIDATE_BATCH) -> list[EngineResult | Exception]:
        """Several requests sharing the pipeline's batches (cross-job batching): candidates of requests with the
        same conditioning token are generated together, up to ``batch_size`` images per call, each verified
        against its own object and count; every request keeps its own seeds, budget, cancellation, progress
        and outcome (a result, or the exception that ended it). Refinement, when a policy asks for it, runs
        per request afterwards. One request alone samples exactly as it always has."""
        jobs: list[_Job] = []
        for request in requests:
            try:  # 1-2. check inputs, write the prompts
                jobs.append(_Job(self, request))
            except Exception as exc:  # noqa: BLE001 - that request's outcome
                jobs.append(_Job.failed(exc))
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

    def _sample_together(self, jobs: list[_Job], batch_size: int) -> None:
        """Stage 3: sample candidates in batches and verify each conservatively, until each job has its
        verified images or its budget ends (one batch at least). Alone, a job takes ``CANDIDATE_BATCH``
        candidates a batch; several share a batch fairly (at least one candidate each per batch)."""
        image_seconds = 0.0  # the last batch's seconds per image: a job near its deadline takes what fits
        while True:
            for job in jobs:
                if job.error is None and job.wants() and job.should_stop():
                    job.error = Canceled()
            active = [j for j in jobs if j.error is None and j.wants()]
            if not active:
                return
            # The text encoder holds one count token at a time: a batch shares one (or none).
            group = [j for j in active if j.token_id == active[0].token_id]
            share = max(1, batch_size // len(group))
            batch: list[tuple[_Job, list[int]]] = []
            room = batch_size
            for job in group:
                n = min(job.wants(), share, room, job.fits(image_seconds))
                if n > 0:
                    batch.append((job, job.take(n)))
                    room -= n
            began = time.perf_counter()
            try:
                if group[0].use_token:
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
            image_seconds = took / len(seeds)
            for job, job_seeds in batch:  # each job pays its share of the batch, so batching costs it no budget
                job.spent += took * len(job_seeds) / len(seeds)
                job.cost["sampling_seconds"] += took * len(job_seeds) / len(seeds)

    def _optimize_misses(self, job: _Job) -> None:
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
                if job.use_token:
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
                job.verified.append(_Candidate(result.hit.seed, result.hit.image, result.hit.verification,
                                               result.hit.iteration))

    def _result(self, job: _Job) -> EngineResult:
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
                              f"refined:{key.id}" if c.iteration is not None else job.token_id, c.iteration)
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
    def library_prompts(self, cls: str, count: int, stated: int | None = None) -> list[str]:
        """The prompts a library token for (cls, count) learns on, from the model's configuration, stating
        ``stated`` (default: the count) as the number."""
        return self.spec.library_texts(plural(cls) if count > 1 else cls, stated or count)

    def learn_library_token(self, cls: str, count: int, config: LibraryConfig = LibraryConfig(),
                            progress: Callable[[IterationReport], None] | None = None,
                            should_stop: Callable[[], bool] | None = None) -> CountToken:
        """Learn the reusable token for (model, cls, count): calibration, then the gradient token; the best
        validated of the two."""
        state = None
        while True:
            part = self.library_slice(cls, count, config, resume=state, progress=progress, should_stop=should_stop)
            if part.done:
                return part.token
            state = part.state

    def calibrate(self, cls: str, count: int, config: LibraryConfig = LibraryConfig(), counts: dict | None = None,
                  slice_seconds: float | None = None, should_stop: Callable[[], bool] | None = None,
                  should_yield: Callable[[], bool] | None = None) -> tuple[dict | None, dict]:
        """Stated-number calibration: which number written in the library prompts makes this model draw
        ``count`` objects most often, on calibration seeds, no gradients. Ties keep the plain count.

        In slices: one generation batch (a stated number, a prompt, its share of the seeds) at a time, stopping
        before one that would end past ``slice_seconds``, or once ``should_yield`` says so (all of it when
        ``slice_seconds`` is None; at least one batch a slice); ``counts`` (the detected counts so far, per stated
        number and prompt) carries it to the next slice. Returns (the calibration once complete, else None;
        the counts)."""
        seeds, counts = calibration_seeds(config), dict(counts or {})
        numbers = range(max(1, count - config.calibration_below),
                        min(self.max_count, count + config.calibration_above) + 1)
        started, batch_s = time.perf_counter(), 0.0
        for stated in numbers:
            prompts, init_word = self._token_prompts(cls, count, stated)
            for i, prompt in enumerate(prompts):
                unit, share = f"{stated}/{i}", seeds[i::len(prompts)]
                if unit in counts or not share:
                    continue
                # like the optimizer's slices: stop before a batch that would end past the slice (at the last one's pace)
                if counts and slice_seconds is not None and (
                        time.perf_counter() - started + batch_s > slice_seconds or (should_yield and should_yield())):
                    return None, counts
                if should_stop and should_stop():
                    raise Canceled()
                # the untrained token is the word it replaces: each prompt exactly as written
                began = time.perf_counter()
                self.t2i.set_token(self.word_vectors(init_word))
                images = self.t2i.generate(prompt, share)
                counts[unit] = [count_of(self.counter, d, cls) for d in self.counter.detect(images)]
                batch_s = time.perf_counter() - began
        tried = {}
        for stated in numbers:
            found = np.array([c for unit, cs in counts.items() if unit.split("/")[0] == str(stated) for c in cs])
            tried[stated] = {"exact": round(float((found == count).mean()), 4),
                             "mae": round(float(np.abs(found - count).mean()), 4), "n": len(found)}
        best = max(tried, key=lambda n: (tried[n]["exact"], -tried[n]["mae"], n == count))
        return {"stated": best, "tried": {str(n): r for n, r in tried.items()}, "seeds": len(seeds)}, counts

    def library_slice(self, cls: str, count: int, config: LibraryConfig = LibraryConfig(), resume: dict | None = None,
                      slice_seconds: float | None = None, progress: Callable[[IterationReport], None] | None = None,
                      should_stop: Callable[[], bool] | None = None,
                      should_yield: Callable[[], bool] | None = None) -> LibrarySlice:
        """Library learning in bounded slices of about ``slice_seconds`` (all of it when None), starting from
        ``resume`` (a previous slice's ``state``): (a) the first slices calibrate the stated number, one
        generation batch at a time; (b) later ones learn the gradient token from the calibrated prompt;
        (c) the token is the best validated so far, the untrained token (the calibrated prompt as written)
        included. ``should_yield``: end the slice at its next step once it says so (a user job waits)."""
        cls = resolve(self.counter, cls)
        self.check_count(count)
        key = self.token_key(cls, count)
        if resume is None or resume.get("calibration") is None:  # (a)
            started = time.perf_counter()
            prior = resume or {"counts": {}, "seconds": 0.0}
            calibration, counts = self.calibrate(cls, count, config, prior["counts"], slice_seconds, should_stop,
                                                 should_yield)
            seconds = prior["seconds"] + time.perf_counter() - started
            stated = calibration["stated"] if calibration else count
            init_word = self._token_prompts(cls, count, stated)[1]
            metadata = {"mode": "library", "iterations": 0, "seconds": round(seconds, 1), "validation": None,
                        "gain": 0.0, "calibration": calibration, "stage": "calibration"}
            return LibrarySlice(CountToken(key, self.word_vectors(init_word), init_word, metadata,
                                           stated if stated != count else None), done=False,
                                state={"calibration": calibration, "counts": counts, "seconds": seconds,
                                       "optimizer": None})
        calibration, optimizer_state = resume["calibration"], resume["optimizer"]
        stated = calibration["stated"]
        prompts, init_word = self._token_prompts(cls, count, stated)
        seeds_for, validation = library_seeds(config)
        result = optimize(self.t2i, self.counter, prompts, cls, count, self.word_vectors(init_word), seeds_for, config,
                          validation_seeds=validation, progress=progress, should_stop=should_stop,
                          resume=optimizer_state, slice_seconds=slice_seconds, prior_seconds=resume["seconds"],
                          semantic=self._semantic_penalty, should_yield=should_yield)
        if optimizer_state is None and result.validation is not None:
            # (c) optimize validated the untrained token, i.e. the calibrated prompt; judge both against the plain one
            plain = self._token_prompts(cls, count, count)[0]
            base = (result.validation["base"] if stated == count else
                    evaluate_token(self.t2i, self.counter, plain, cls, count, self.word_vectors(init_word), validation))
            result.validation = {**result.validation, "calibration": result.validation["base"], "base": base}
            result.state["validation"] = result.validation
        kept = "token" if result.validation and result.validation["best_iteration"] else "calibration"
        metadata = {"mode": "library", "iterations": result.iterations, "seconds": round(result.seconds, 1),
                    "validation": result.validation, "gain": gain(result.validation), "kept": kept, "stage": "token",
                    "calibration": calibration, "config": config.model_dump(), "prompts": prompts}
        token = CountToken(key, result.vectors, init_word, metadata, stated if stated != count else None)
        return LibrarySlice(token, result.done, {"calibration": calibration, "seconds": result.seconds,
                                                 "optimizer": result.state})

    def _token_prompts(self, cls: str, count: int, stated: int) -> tuple[list[str], str]:
        """The library prompts stating ``stated``, with the placeholder, and the word the token starts from
        (the templates put the same word before the number)."""
        placed = [place_token(p, stated) for p in self.library_prompts(cls, count, stated)]
        return [p for p, _ in placed], placed[-1][1]


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
