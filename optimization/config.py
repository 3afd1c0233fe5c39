"""Every tunable of the algorithm, declared once, with its default.

``ModelSpec`` is one served model: everything that differs between models is a field here, so the
engine, the optimizer and the pipelines never ask which model they hold. ``workers.settings`` lists
these specs (``TALLY_MODELS``), the CLI and the benchmarks read the same objects, and the shipped
reference world is simply two specs (``optimization.reference.models``).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

GENERATION_BATCH = 16  # images per pipeline call: the engine's, and the worker's across queued jobs


class Policy(StrEnum):
    """How the engine looks for verified images (see ``engine`` and ``policy``)."""

    resample = "resample"  # candidates from the base prompt
    library = "library"  # candidates conditioned on the cached library token, when there is one (job.add: it gives way)
    refine = "refine"  # library, then token refinement on the nearest misses
    noise = "noise"  # library, then optimization of the nearest misses' initial noise

    @property
    def uses_token(self) -> bool:
        """Whether the policy conditions on the library token (and a library miss schedules learning)."""
        return self is not Policy.resample

    @property
    def optimizes(self) -> bool:
        """Whether the policy optimizes after sampling (and so reserves part of a job's seconds for it)."""
        return self in (Policy.refine, Policy.noise)

    @property
    def batches(self) -> bool:
        """Whether jobs of the policy share pipeline batches with other jobs (optimization runs alone: it
        would hold the others' results back)."""
        return not self.optimizes


class Stage(StrEnum):
    """What a running job is doing; the engine's progress events name it."""

    sampling = "sampling"
    refining = "refining"
    verifying = "verifying"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Budget(_Frozen):
    """What one job may spend; the engine stops at the first limit reached."""

    max_seconds: float = Field(60.0, gt=0, description="Wall-clock seconds in the engine.")
    max_candidates: int = Field(64, gt=0, description="Candidate images sampled.")
    max_iterations: int = Field(20, gt=0, description="Token-refinement iterations.")


class OptimizeConfig(_Frozen):
    """The optimizer loop: AdamW on the token, counting loss + detector guard (+ optional L2)."""

    lr: float = Field(2e-2, gt=0)
    max_iterations: int = Field(20, ge=1)
    max_seconds: float | None = Field(None, gt=0)
    guard_weight: float = Field(0.1, ge=0)
    l2_weight: float = Field(0.0, ge=0)
    eot_samples: int = Field(0, ge=0, le=32, description=(
        "Expectation over transformation: the potential is averaged over this many randomly shifted, flipped, "
        "zoomed and blurred copies of each image, so the loss moves what survives such changes (objects) rather "
        "than what fools one view of the detector; 0: the image as it is."))
    seed: int = Field(0, ge=0, description="Seed stream of library learning (training and validation seeds).")


class RefineConfig(OptimizeConfig):
    """Per-job refinement (the paper's setting): the seeds of one job, until one image is verified."""

    reserve: float = Field(0.5, ge=0, lt=1, description=(
        "Share of a job's max_seconds that sampling leaves to optimization (refine and noise policies), so "
        "sampling cannot starve it."))


class NoiseConfig(RefineConfig):
    """Per-job noise optimization (ReNO-style): the initial latent of a near miss, until its image is verified."""

    lr: float = Field(5e-2, gt=0)
    norm_weight: float = Field(1.0, ge=0, description="Weight of the term keeping the latent's norm where a "
                                                     "Gaussian's is.")


class LibraryConfig(OptimizeConfig):
    """Background learning of a reusable token for one key: (a) stated-number calibration, then (b) the
    gradient token on fresh seeds every iteration from the calibrated prompt; (c) whichever validates best on
    disjoint seeds is kept."""

    lr: float = Field(5e-3, gt=0)
    max_iterations: int = Field(30, ge=1)
    max_seconds: float | None = Field(600.0, gt=0, description="Budget per key, calibration included, over all slices.")
    calibration_below: int = Field(2, ge=0, description="Stated numbers tried below the count ...")
    calibration_above: int = Field(4, ge=0, description="... and above it (models tend to draw fewer than asked).")
    calibration_seeds: int = Field(24, ge=1, description="Seeds per stated number (from the training range).")
    seeds_per_iteration: int = Field(16, ge=1)
    validation_seeds: int = Field(64, ge=1)
    validate_every: int = Field(5, ge=1)
    min_gain: float = Field(0.05, ge=-1, le=1, description=(
        "Held-out exact-rate gain over the base prompt a token needs to enter the library; a token that "
        "cannot beat the base is not worth its GPU time."))
    max_gain_p: float = Field(0.05, ge=0, le=1, description=(
        "... and a gain that chance explains at most this often: the one-sided sign test's p-value on the "
        "admission seeds where exactly one of token and base prompt is exact (1 turns the test off)."))


class VerifyConfig(_Frozen):
    """Conservative verification: a wrong "verified" is worse than an honest "not verified"."""

    count_confidence: float = Field(0.5, gt=0, lt=1, description="A detection counts from this confidence on.")
    verify_confidence: float = Field(0.7, gt=0, lt=1, description="Every object must be detected this surely.")
    ambiguous_floor: float = Field(0.15, gt=0, lt=1,
                                   description="Detections of the class in [floor, verify) make an image doubtful.")
    nms_iou: float = Field(0.5, gt=0, lt=1)
    mirrored_view: bool = Field(False, description=(
        "Also detect on the image mirrored left to right and keep, per prediction, the surer class scores of the "
        "two views (boxes averaged): a shape seen surely in either view is there. Doubles the detector's work."))
    doubt_classes: list[str] = Field([], description=(
        "Detector classes that mark a shape as no clean object (a merged blob, a fragment, a smear): one "
        "such detection from ambiguous_floor on makes an image doubtful. Never requestable objects."))
    confusable: list[list[str]] = Field([], description=(
        "Groups of object classes the detector mistakes for one another (e.g. apple, orange): on a job for one "
        "of a group, a detection of another at count_confidence may be one of the objects asked, misnamed, and "
        "makes the image doubtful as an ambiguous detection does."))
    presence_floor: float | None = Field(None, gt=0, lt=1, description=(
        "A detection of any class from this confidence on, below the floors above and on no shape they already "
        "report, is a shape the detector barely sees (a faint dot, a smear): reported as unclear, so the image is "
        "doubtful. None: off."))

    @model_validator(mode="after")
    def _ordered(self) -> "VerifyConfig":
        if not self.ambiguous_floor <= self.count_confidence <= self.verify_confidence:
            raise ValueError("need ambiguous_floor <= count_confidence <= verify_confidence")
        if self.presence_floor is not None and self.presence_floor >= self.ambiguous_floor:
            raise ValueError("need presence_floor < ambiguous_floor (above it, the class floors already report)")
        return self


class SemanticGuard(_Frozen):
    """The paper's CLIP similarity penalty during token optimization (``optimization.semantic``)."""

    clip: str = Field(description="transformers CLIPModel: hub id (e.g. openai/clip-vit-base-patch32) or folder.")
    weight: float = Field(1.0, gt=0, description="Penalty weight, in object units of the counting loss.")


class ModelSpec(_Frozen):
    """One served model: pipeline, detector and everything that differs between models."""

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")
    pipeline: str = Field(description="diffusers pipeline: hub id or local folder.")
    vae: str | None = Field(None, description=(
        "AutoencoderKL (hub id or local folder) loaded in place of the pipeline's own, e.g. SDXL's fp16-fix VAE; "
        "the reference pipelines share one this way."))
    detector: str = Field(description="Detector weights (for ``yolo``: an ultralytics .pt file).")
    detector_kind: str = Field("yolo", description="Counter backend (``optimization.counter.COUNTERS``).")
    device: str = "cpu"
    dtype: Literal["fp32", "fp16", "bf16"] = "fp32"
    # Sampler: 1 step without guidance is the SDXL-Turbo setting.
    num_inference_steps: int = Field(1, ge=1)
    guidance_scale: float = Field(0.0, ge=0)
    guidance_rescale: float = Field(0.0, ge=0, le=1, description=(
        "diffusers' guidance_rescale (Lin et al. 2024): pulls guided predictions back to the spread of the "
        "conditional one, against the washed-out or stained images strong guidance gives models trained with a "
        "zero-terminal-SNR schedule. 0: off."))
    guidance_schedule: list[float] = Field([], description=(
        "Guidance scale of each denoising step in order (one per step, each above 1, the first equal to "
        "guidance_scale): strong early, where the layout and the number of objects are decided, milder late, "
        "where strong guidance deforms the shapes (Kynkaanniemi et al. 2024 guide only part of the steps). "
        "Empty: guidance_scale at every step."))
    max_count: int = Field(12, ge=1, le=100)
    classes: list[str] | None = Field(
        None, description="Detector classes, so the API checks objects before any worker starts; None: the "
                          "classes the model's workers publish.")
    verify: VerifyConfig = VerifyConfig()
    crosscheck: str | None = Field(
        None, description="An independent second counter by name (``optimization.counter.CROSSCHECKS``); "
                          "it must agree for an image to be verified.")
    library_prompts: list[str] = Field(
        ["a photo of {count} {objects}"],
        description="Templates a library token learns on ({count}, {objects}, and {attribute} when "
                    "attribute_words is set: one prompt per word).")
    attribute_words: list[str] = []
    default_policy: Policy | None = Field(None, description="None: the deployment's default policy.")
    restate_after: int | None = Field(
        None, ge=1, description="Candidates of one stated number after which sampling from the prompt, none verified, "
                                "writes a lower number in it where the model drew more than asked (never a higher "
                                "one: see crowd_word; ``job.next_stated``); None: never (measured per model).")
    crowd_word: str | None = Field(
        None, min_length=1, pattern=r"^[a-z]+$",
        description="A word the model draws crowds for (\"many\"), stated in place of the number when restating "
                    "finds the model draws too few even of the count itself; None: never more than the count.")
    semantic_guard: SemanticGuard | None = Field(
        None, description="CLIP image-text penalty beside the detector guard, so the count cannot be won with "
                          "degenerate images (real models); None: off.")

    @model_validator(mode="after")
    def _schedule_fits(self) -> "ModelSpec":
        if self.guidance_schedule and (len(self.guidance_schedule) != self.num_inference_steps
                                       or min(self.guidance_schedule) <= 1
                                       or self.guidance_schedule[0] != self.guidance_scale):
            raise ValueError(f"guidance_schedule needs {self.num_inference_steps} scales (num_inference_steps), each "
                             f"above 1, the first equal to guidance_scale ({self.guidance_scale:g}); got "
                             f"{self.guidance_schedule}")
        return self

    def library_texts(self, objects: str, count: int | str) -> list[str]:
        """The library prompts of one key, every attribute word substituted."""
        out = []
        for template in self.library_prompts:
            words = self.attribute_words if "{attribute}" in template else [""]
            out += [" ".join(template.format(count=count, objects=objects, attribute=w).split()) for w in words]
        return out
