"""One request through the count engine: what it asks (``GenerationRequest``), its state through the engine's
stages (``JobState``: inputs checked, prompts written, candidates and their seeds, budget and deadline), and
what it gets back (``EngineResult`` of ``ImageResult``s)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .config import Budget, Policy, Stage
from .count_token import CountToken, TokenKey, place_token
from .counter import Verification
from .prompts import with_count

if TYPE_CHECKING:
    from .engine import CountEngine

CANDIDATE_BATCH = 8


@dataclass
class ImageResult:
    image: torch.Tensor  # [3, H, W] in [0, 1]
    seed: int
    verification: Verification
    policy: str
    token: str | None  # the token key used, "refined:<key>" after refinement, None for the base prompt
    iteration: int | None = None  # refinement iteration that produced it
    stated: int | str | None = None  # what its prompt stated, where sampling restated it (``next_stated``)

    @property
    def verified(self) -> bool:
        return self.verification.verified

    def to_dict(self) -> dict:
        return {"seed": self.seed, **self.verification.to_dict(), "policy": self.policy, "token": self.token,
                "refine_iteration": self.iteration, "stated_count": self.stated}


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
class Candidate:
    seed: int
    image: torch.Tensor
    verification: Verification
    iteration: int | None = None  # set when token refinement produced it
    stated: int | str | None = None  # set when sampled from a prompt whose number was restated
    token: str | None = None  # the library token's key when sampled with it


def next_stated(medians: dict[int | str, int], count: int, crowd_word: str | None = None) -> int | str:
    """What to write in the prompt next, from the median confident count each stated number drew so far (the last
    one tried last): a model that draws 10 when asked for 6 may draw 6 when asked for 4. The rungs are the numbers
    1 to ``count`` and, above them, the model's ``crowd_word`` ("many") if it has one. A rung that drew too many
    bounds the search from above, one that drew too few from below; the first step moves by the whole miss, later
    ones bisect between the bounds. Stays where the last rung drew ``count``.

    Never a number above ``count``: a model that draws too few of a number it was never taught draws no more when
    asked for a larger one (`reference-web` asked for 9 to 12 draws five or six); a word it knows for crowds
    does (docs/measured.md, "The engine")."""
    rungs = [*range(1, count + 1), *([crowd_word] if crowd_word else [])]
    rank = {s: i for i, s in enumerate(rungs)}
    last = list(medians)[-1]
    if medians[last] == count:
        return last
    above = [rank[s] for s, m in medians.items() if m > count]
    below = [rank[s] for s, m in medians.items() if m < count]
    hi, lo = min(above, default=len(rungs)), max(below, default=-1)
    if hi - lo <= 1:  # nothing left between the bounds: the closer of the two
        return min((s for s in medians if rank[s] in (lo, hi)), key=lambda s: abs(medians[s] - count))
    if above and below:
        return rungs[(lo + hi) // 2]
    return rungs[min(max(rank[last] + count - medians[last], lo + 1), hi - 1)]


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


class JobState:
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
        if isinstance(stated, int):  # else the model's crowd word
            engine.check_count(stated)
        token_source = self.text if stated == request.count else with_count(request.prompt, self.cls, stated)
        self.token_text, self.init_word = place_token(token_source, stated)
        self.sample_text = self.token_text if self.use_token else self.text
        self.token_id = request.token.key.id if self.use_token else None  # the token sampling uses now
        # Restating the number: the plain prompt from the start; a library token states its own, calibrated number,
        # and gives way to the plain prompt once ``restate_after`` of its candidates verified none.
        self.restate_after = engine.spec.restate_after
        self.crowd_word = engine.spec.crowd_word
        self.stated = stated
        self.medians: dict[int | str, int] = {}  # stated rung -> median confident count of its candidates
        self.drawn: list[int] = []  # confident counts at the stated number now
        self.verified: list[Candidate] = []
        self.misses: list[Candidate] = []
        self.index = 0
        reserve = engine.refine_config.reserve if self.policy.optimizes else 0.0
        self.sampling_seconds = request.budget.max_seconds * (1 - reserve)
        self.sampling_deadline = None  # the reserve is also a share of the wall time left to the deadline
        if request.deadline is not None:
            self.sampling_deadline = request.deadline - reserve * max(0.0, request.deadline - time.time())

    @classmethod
    def failed(cls, error: Exception) -> JobState:
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
        """Images (its own and its companions') that a batch can hold and still end before its sampling deadline,
        at ``image_seconds`` each (one at least; no limit without a deadline or a measured pace): a batch never
        carries a job far past its budget."""
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
        stated = None if self.stated == self.count else self.stated
        for s, image, verdict in zip(seeds, images, verdicts):
            (self.verified if verdict.verified else self.misses).append(
                Candidate(s, image, verdict, stated=stated, token=self.token_id))
        self.cost["candidates"] += len(seeds)
        if self.restate_after and not self.verified:
            if self.token_id is None:
                self._restate([v.detected_count for v in verdicts])
            elif self.cost["candidates"] >= self.restate_after:  # the token misses here: the plain prompt
                self.token_id, self.sample_text, self.stated = None, self.text, self.count
        self.events({"stage": Stage.sampling, "candidates": self.cost["candidates"],
                     "images_verified": self.verified_so_far(), "detected_counts": [v.detected_count for v in verdicts]})

    def _restate(self, drawn: list[int]) -> None:
        """After ``restate_after`` candidates of one stated number, none verified, sample on from the number
        ``next_stated`` gives (the count stays what verification checks)."""
        self.drawn += drawn
        if len(self.drawn) < self.restate_after:
            return
        self.medians.pop(self.stated, None)  # a rung tried again counts as the last one tried
        self.medians[self.stated] = statistics.median_low(self.drawn)
        self.drawn = []
        stated = next_stated(self.medians, self.count, self.crowd_word)
        if stated != self.stated:
            self.stated = stated
            self.sample_text = with_count(self.request.prompt, self.cls, stated)
            self.events({"stage": Stage.sampling, "candidates": self.cost["candidates"], "stated_count": stated,
                         "images_verified": 0})

    def verified_so_far(self) -> int:
        """Verified images of those asked for: a batch may verify more than asked, and the job returns only the
        asked number, so progress counts them capped (it never goes back at the end)."""
        return min(len(self.verified), self.request.num_images)
