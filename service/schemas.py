"""Request and response bodies: the OpenAPI document is the contract."""

from __future__ import annotations

import unicodedata
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from optimization.config import Policy, Stage
from optimization.counter import Reason
from workers.statuses import JobStatus as Status
from workers.statuses import LearningStatus, WebhookEvent


class Error(BaseModel):
    code: str
    message: str


# Request bodies are strict where JSON is exact: an integer field takes a JSON integer (not "7", true or 7.0),
# a boolean a JSON boolean, a number a finite one. Enums (policy) take their string values. The deployment's
# limits (count, num_images, prompt length, budget maxima) are checked by ``workers.requests.build_request``
# with messages that say what is allowed, and stated in the OpenAPI document by ``app._deployment_limits``;
# the bounds declared here are the ones that hold in every deployment.
class BudgetIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_seconds: float | None = Field(None, gt=0, strict=True, allow_inf_nan=False,
                                      description="Wall-clock seconds for the engine.")
    max_candidates: int | None = Field(None, gt=0, strict=True, description="Candidate images to sample.")
    max_iterations: int | None = Field(None, gt=0, strict=True, description="Token-refinement iterations.")


# Refused in text: control characters (Cc), lone surrogates (Cs), format characters (Cf: bidi overrides such
# as U+202E, U+FEFF, zero-width joiners) and the line and paragraph separators (Zl, Zp): invisible or
# reordering, they make a prompt show as something other than what the model reads.
_REFUSED_CATEGORIES = ("Cc", "Cs", "Cf", "Zl", "Zp")


def _no_control_characters(value: str | None, field: str) -> str | None:
    """Control, format and separator characters (tab, CR and LF excepted: they are whitespace) are refused,
    not stripped: a prompt is stored, echoed and logged as sent, and silently changing it would change its
    seed's images."""
    if value is None:
        return value
    for i, ch in enumerate(value):
        if ch not in "\t\n\r" and unicodedata.category(ch) in _REFUSED_CATEGORIES:
            raise ValueError(f"{field} holds an invisible or control character (U+{ord(ch):04X} at {i}); only "
                             "printable text, spaces, tabs and line breaks are allowed")
    return value


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: str = Field(min_length=1, description="What to draw; the count is written into it by the count rule. "
                                                  "It must name one of the model's objects (GET /v1/models lists "
                                                  "them; e.g. 'red circles'), unless `object` says which. Printable "
                                                  "text (tabs and line breaks allowed, no control or invisible "
                                                  "characters), at most max_prompt_length characters.")
    count: int = Field(strict=True, json_schema_extra={"minimum": 1},
                       description="How many objects (1..max_count of the model).")
    object: str | None = Field(None, max_length=100,
                               description="Object to count, one of the model's objects; default: the one the "
                                           "prompt names (422 pointing here when it names none).")
    num_images: int = Field(1, strict=True, json_schema_extra={"minimum": 1},
                            description="Verified images wanted (1..max_images).")
    seed: int | None = Field(None, ge=0, lt=2**63, strict=True, description="Same seed, same request: same images.")
    model: str | None = Field(None, max_length=64,
                              description="A configured model id; default: the deployment's default.")
    policy: Policy | None = Field(None, description="Default: the policy measured best (see README).")
    budget: BudgetIn | None = None
    queue_if_offline: bool = Field(False, strict=True, description="Queue the job even if no worker serves the "
                                                                   "model now (else 503 no_worker).")
    webhook: str | None = Field(None, max_length=2000, description=(
        "An http(s) URL to POST the job's events to, signed (Standard Webhooks; the secret is in GET /v1/me). "
        "Public addresses only, unless the deployment allows private ones."))
    webhook_events_filter: list[WebhookEvent] | None = Field(None, min_length=1, description=(
        "Which events to send: start, progress (at most one per 0.5 s), completed; default start and completed."))

    @field_validator("prompt", "object")
    @classmethod
    def _printable(cls, value: str | None, info) -> str | None:
        return _no_control_characters(value, info.field_name)


class Links(BaseModel):
    self: str
    events: str
    images: str


class JobAccepted(BaseModel):
    id: str
    status: Status
    links: Links


class Progress(BaseModel):
    images_verified: int = 0
    candidates: int = 0
    iterations: int = 0
    loss: float | None = None
    detected_counts: list[int] = []
    stated_count: int | str | None = Field(None, description="The number (or the model's crowd word, \"many\") "
                                                             "sampling now writes in the prompt, where it restated "
                                                             "it (``ModelSpec.restate_after``).")


class TokenUse(BaseModel):
    key: str
    library_hit: bool
    learning_scheduled: bool


class DetectionOut(BaseModel):
    box: list[float] = Field(description="x0, y0, x1, y1 in image pixels.")
    kind: Literal["confident", "ambiguous", "unclear", "other_class"] = Field(
        description="confident: the object at the verification confidence; ambiguous: the object in the doubtful "
                    "confidence band; unclear: a shape the detector calls no clean object, or barely sees (under the "
                    "model's presence floor); other_class: another object.")
    object: str
    confidence: float


class ImageOut(BaseModel):
    url: str
    index: int
    seed: int
    detected_count: int = Field(description="Confident detections of the object (the count verification checks).")
    verified: bool
    boxes: list[list[float]] = Field(description="The confident detections' boxes.")
    confidences: list[float]
    reason: Reason | None = Field(
        None, description="Why the image is not verified (the first check that failed); null when verified.")
    confident: int | None = Field(None, description="Detections of the object at the verification confidence.")
    ambiguous: int | None = Field(None, description="Detections of the object in the ambiguous confidence band.")
    unclear: int | None = Field(None, description="Shapes the detector calls no clean object (merged, fragment, "
                                                  "smear), where the model's detector knows them, or barely sees.")
    other_class: int | None = Field(None, description="Confident detections of other objects.")
    crosscheck_count: int | None = Field(None, description="The model's independent counter, where it has one.")
    detections: list[DetectionOut] = Field([], description="Every detection verification looked at, by kind "
                                                             "(drawn in the kind's colour by ?boxes=true).")
    policy: Policy
    token: str | None = None
    refine_iteration: int | None = Field(None, description="Set when token refinement produced the image: its "
                                                           "seed alone does not reproduce it.")
    stated_count: int | str | None = Field(None, description="Set when the prompt stated another than the count: "
                                                             "sampling restated it (the model drew systematically "
                                                             "more, or fewer, than asked), or the library token's "
                                                             "calibration did; the image was drawn stating this "
                                                             "number or the model's crowd word (\"many\"), so its "
                                                             "seed alone does not reproduce it.")


class Cost(BaseModel):
    candidates: int
    iterations: int = Field(description="Optimization iterations (token refinement or noise optimization).")
    seconds: float
    sampling_seconds: float | None = Field(None, description="Of ``seconds``: sampling and verifying candidates.")
    optimizing_seconds: float | None = Field(None, description="Of ``seconds``: optimizing near misses.")


class JobOut(BaseModel):
    id: str
    status: Status
    stage: Stage | None = None
    queue_position: int | None = None
    model: str
    prompt: str | None = Field(None, description="The prompt as generated, with the count written in.")
    prompt_as_typed: str | None = Field(None, description="The prompt as the request gave it.")
    object: str | None = None
    count: int
    num_images: int = Field(1, description="Verified images asked for.")
    policy: Policy
    seed: int = Field(description="The job's seed; candidate i has seed + i * 4294967311 (mod 2**63), so an "
                                  "image's seed submitted back as the job's seed gives that image first.")
    seed_source: Literal["request", "idempotency_key", "server"] = Field(
        "request", description="Who chose the seed: the request, its idempotency key, or the server.")
    progress: Progress
    token: TokenUse | None = None
    results: list[ImageOut] = []
    budget_exhausted: bool | None = Field(None, description="The budget ran out before every image asked for "
                                                           "was verified.")
    cost: Cost | None = None
    timings: dict[str, float] = {}
    error: Error | None = None
    warnings: list[str] = Field([], description="What may make the images miss the prompt, e.g. words the "
                                               "model's tokenizer cannot encode whole; set when the job starts.")
    estimated_start: float | None = Field(None, description="While queued: Unix time a worker is expected to "
                                                             "take it (queue position, live workers, measured "
                                                             "seconds per job of the model).")
    deadline: float | None = Field(None, description="Unix time by which the job ends: its first start plus its "
                                                      "budget's max_seconds (a retry does not extend it).")
    webhook: str | None = None
    webhook_events_filter: list[WebhookEvent] | None = None
    cancel_requested: bool = Field(False, description="In the answer to DELETE: the job was asked to stop (a "
                                                      "running job stops within one iteration).")


class JobList(BaseModel):
    jobs: list[JobOut]
    next_cursor: str | None = Field(None, description="Pass as ?cursor= for the next page; null at the end.")


class LearningTask(BaseModel):
    key: str
    model: str
    object: str
    count: int
    status: LearningStatus
    iterations: int
    max_iterations: int
    slices: int
    validation: dict | None = None
    gain: float | None = None
    created: float
    updated: float


class TokenOut(BaseModel):
    key: str
    model: str
    object: str
    count: int
    init_word: str | None = None
    stated_count: int | str | None = Field(None, description="What the token's prompts write in place of the count, "
                                                             "where calibration chose another number or the model's "
                                                             "crowd word (\"many\"); images are still verified at "
                                                             "the count.")
    tensors: dict[str, list[int]]
    metadata: dict
    size: int
    links: dict[str, str] = {}


class ModelOut(BaseModel):
    id: str
    pipeline: str = Field(description="The diffusers pipeline: its hub id as configured, or for a local folder "
                                      "only the folder's name (server paths are never shown).")
    detector: str = Field(description="The detector weights: as configured when not a path, or for a local file "
                                      "only the file's name (server paths are never shown).")
    device: str
    fingerprint: str | None = None
    classes: list[str] | None = None
    max_count: int
    default_policy: Policy
    live_workers: list[str]
    queue_depth: int
    estimated_wait_s: float | None = Field(None, description="Seconds a job submitted now waits for a worker, "
                                                             "from the queue and the measured seconds per job; "
                                                             "null before any job was measured or without workers.")


class JobEvent(BaseModel):
    """A ``progress`` event of ``GET /v1/jobs/{id}/events``: the job's status, and its stage and progress while
    it runs (``requeued``: a worker stopped and the job went back to its queue)."""
    model_config = ConfigDict(extra="allow")
    status: Status
    stage: Stage | None = None
    progress: Progress | None = None
    requeued: bool | None = None
    cancel_requested: bool | None = None


class Me(BaseModel):
    """``GET /v1/me``: the calling key."""

    owner: str = Field(description="Whose jobs this key lists and reads.")
    scope: Literal["user", "admin"] = Field(description="admin: may also write the token library.")
    name: str | None = Field(None, description="The key's name (null with auth off).")
    auth: Literal["required", "off"] = Field(description="off: this deployment checks no key.")
    webhook_secret: str = Field(description="Verifies this key's webhook deliveries (Standard Webhooks: "
                                            "HMAC-SHA256 of 'webhook-id.webhook-timestamp.body').")
