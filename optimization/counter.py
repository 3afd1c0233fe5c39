"""What the engine and the optimizer need from an object counter, and the factory that builds one.

A ``Counter`` knows its classes, detects objects in image tensors ``[B, 3, H, W]`` in [0, 1], and exposes
its raw per-class scores so the optimizer can differentiate a count (the potential). ``YoloCounter``
(``optimization.yolo``) is the one backend today; another is one module plus one line in ``COUNTERS``.

``verify`` turns detections into a conservative verdict; an optional independent cross-check counter
(``CROSSCHECKS``, named by the model's configuration) must agree too.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol

from .config import ModelSpec, VerifyConfig
from .errors import InvalidRequest
from .prompts import resolve_class

if TYPE_CHECKING:
    import numpy as np
    import torch

# Backends by ``ModelSpec.detector_kind`` and cross-checks by ``ModelSpec.crosscheck``, imported on use.
COUNTERS = {"yolo": "optimization.yolo:YoloCounter"}
CROSSCHECKS = {"components": "optimization.reference.crosscheck:crosscheck_count"}


@dataclass
class Detections:
    """Detections of one image, in that image's pixel coordinates, sorted by confidence."""

    boxes: list[tuple[float, float, float, float]]
    confidences: list[float]
    classes: list[str]

    def of(self, cls: str, min_confidence: float) -> "Detections":
        keep = [i for i, (c, p) in enumerate(zip(self.classes, self.confidences)) if c == cls and p >= min_confidence]
        return Detections([self.boxes[i] for i in keep], [self.confidences[i] for i in keep], [cls] * len(keep))

    def count(self, cls: str, min_confidence: float) -> int:
        return sum(c == cls and p >= min_confidence for c, p in zip(self.classes, self.confidences))

    def report(self) -> dict:
        """What results show of these detections: their number, boxes and confidences."""
        return {"detected_count": len(self.boxes), "boxes": [[round(v, 1) for v in b] for b in self.boxes],
                "confidences": [round(c, 3) for c in self.confidences]}


class Counter(Protocol):
    """An object counter the engine can verify with and the optimizer can differentiate."""

    classes: list[str]
    config: VerifyConfig

    def detect(self, images: torch.Tensor) -> list[Detections]:
        """Detections of every class per image (no gradients)."""

    def raw(self, images: torch.Tensor) -> torch.Tensor:
        """Raw predictions of a batch, differentiable with respect to the images."""

    def class_scores(self, raw: torch.Tensor) -> torch.Tensor:
        """Per-class scores ``[B, nc, A]`` in [0, 1] of raw predictions: their sum over A is the potential."""

    def detections_from_raw(self, raw: torch.Tensor, image_size: tuple[int, int]) -> list[Detections]:
        """The detections ``detect`` would give, from raw predictions computed elsewhere."""


def _import(path: str):
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def load_counter(spec: ModelSpec) -> Counter:
    """The counter a model entry names (``detector_kind`` + ``detector`` weights, ``verify`` thresholds)."""
    if spec.detector_kind not in COUNTERS:
        raise InvalidRequest(f"unknown detector kind {spec.detector_kind!r}; known: {', '.join(COUNTERS)}")
    return _import(COUNTERS[spec.detector_kind])(spec.detector, device=spec.device, config=spec.verify)


def load_crosscheck(name: str | None) -> Callable[[np.ndarray], int] | None:
    if name is None:
        return None
    if name not in CROSSCHECKS:
        raise InvalidRequest(f"unknown cross-check {name!r}; known: {', '.join(CROSSCHECKS)}")
    return _import(CROSSCHECKS[name])


def resolve(counter: Counter, name: str) -> str:
    """The counter's class for an object name (singular or plural, any case)."""
    return resolve_class(name, counter.classes)


def count(counter: Counter, detections: Detections, cls: str) -> int:
    """Detections of ``cls`` at the counter's counting confidence."""
    return detections.count(cls, counter.config.count_confidence)


def potential(counter: Counter, images: torch.Tensor, cls: str) -> torch.Tensor:
    """Differentiable sum of the class's scores over all raw predictions, ``[B]`` (the paper's potential)."""
    return counter.class_scores(counter.raw(images))[:, counter.classes.index(resolve(counter, cls))].sum(-1)


DETECTION_KINDS = ("confident", "ambiguous", "unclear", "other_class")


def detection_kinds(det: Detections, cls: str, config: VerifyConfig) -> list[tuple[tuple, str, str, float]]:
    """(box, kind, class, confidence) of every detection verification looks at: the class's ``confident`` and
    ``ambiguous`` ones, doubt classes (``unclear``) from the ambiguous floor, other classes from the counting
    confidence, ``ambiguous`` where the class is confusable with the one asked (``VerifyConfig.confusable``),
    and, from ``VerifyConfig.presence_floor``, any other detection on no shape already reported (``unclear``: a
    shape the detector barely sees)."""
    confused = {c for group in config.confusable if cls in group for c in group}
    out, faint = [], []
    for box, c, p in zip(det.boxes, det.classes, det.confidences):
        if c == cls and p >= config.ambiguous_floor:
            out.append((box, "confident" if p >= config.verify_confidence else "ambiguous", c, p))
        elif c in config.doubt_classes and p >= config.ambiguous_floor:
            out.append((box, "unclear", c, p))
        elif c in confused and p >= config.count_confidence:
            out.append((box, "ambiguous", c, p))
        elif c != cls and c not in config.doubt_classes and p >= config.count_confidence:
            out.append((box, "other_class", c, p))
        elif config.presence_floor is not None and p >= config.presence_floor:
            faint.append((box, "unclear", c, p))
    # A faint detection mostly on a reported shape is that shape seen again under another name, not one more.
    return out + [f for f in faint if all(_covered(f[0], box) <= FAINT_COVERED for box, _, _, _ in out)]


FAINT_COVERED = 0.2  # share of a faint detection's box inside a reported one above which it is that same shape


def _covered(box: tuple, by: tuple) -> float:
    """The share of ``box``'s area inside ``by``."""
    w, h = min(box[2], by[2]) - max(box[0], by[0]), min(box[3], by[3]) - max(box[1], by[1])
    area = (box[2] - box[0]) * (box[3] - box[1])
    return max(w, 0) * max(h, 0) / area if area > 0 else 1.0


class Reason(StrEnum):
    """Why an image is not verified: the first check that failed."""

    degenerate_image = "degenerate_image"  # not an image at all (``degenerate``)
    count_mismatch = "count_mismatch"  # confident detections of the object != the count asked
    ambiguous_detections = "ambiguous_detections"  # detections of the object in the ambiguous band
    unclear_shapes = "unclear_shapes"  # shapes the detector calls no clean object (merged, fragment, smear)
    crosscheck_disagrees = "crosscheck_disagrees"  # the independent counter counts otherwise


@dataclass
class Verification:
    """The verdict on one image: ``verified`` only if every check agrees on exactly ``target`` objects.

    Its counts are honest: ``detected_count`` is the confident count, and the doubt beside it (ambiguous
    detections of the class, unclear shapes, other classes, the cross-check's count) is reported, not folded
    into it."""

    target: int
    kinds: list[tuple[tuple, str, str, float]]  # ``detection_kinds`` of the image
    crosscheck: int | None = None  # the independent counter's count, where there is one
    degenerate: bool = False  # not an image (``degenerate``): never verified, never a closest miss

    def _count(self, kind: str) -> int:
        return sum(k == kind for _, k, _, _ in self.kinds)

    @property
    def confident(self) -> int:
        """Detections of the class at verify_confidence: what results call ``detected_count``."""
        return self._count("confident")

    @property
    def detected_count(self) -> int:
        return self.confident

    @property
    def ambiguous(self) -> int:  # of the class in [ambiguous_floor, verify_confidence), or of a confusable one
        return self._count("ambiguous")

    @property
    def doubtful(self) -> int:  # of a doubt class (merged blob, fragment, smear) from ambiguous_floor
        return self._count("unclear")

    @property
    def other_class(self) -> int:  # of another object class, at count_confidence
        return self._count("other_class")

    @property
    def verified(self) -> bool:
        return (not self.degenerate and self.confident == self.target and self.ambiguous == 0 and self.doubtful == 0
                and (self.crosscheck is None or self.crosscheck == self.target))

    @property
    def reason(self) -> Reason | None:
        """Why the image is not verified (the first check that failed), None if it is."""
        if self.verified:
            return None
        if self.degenerate:
            return Reason.degenerate_image
        if self.confident != self.target:
            return Reason.count_mismatch
        if self.ambiguous:
            return Reason.ambiguous_detections
        if self.doubtful:
            return Reason.unclear_shapes
        return Reason.crosscheck_disagrees

    @property
    def miss(self) -> float:
        """How far from verified, doubt counted against the image, so the closest miss is one a person would also
        call close (an ambiguous or unclear shape may be one object more or less)."""
        if self.degenerate:
            return math.inf
        crosscheck = abs(self.crosscheck - self.target) if self.crosscheck is not None else 0
        return abs(self.confident - self.target) + self.ambiguous + self.doubtful + crosscheck

    def to_dict(self) -> dict:
        confident = [(box, p) for box, k, _, p in self.kinds if k == "confident"]
        return {"detected_count": self.confident, "boxes": [[round(v, 1) for v in b] for b, _ in confident],
                "confidences": [round(p, 3) for _, p in confident], "verified": self.verified, "reason": self.reason,
                "confident": self.confident, "ambiguous": self.ambiguous, "unclear": self.doubtful,
                "other_class": self.other_class, "crosscheck_count": self.crosscheck,
                "detections": [{"box": [round(v, 1) for v in box], "kind": kind, "object": c, "confidence": round(p, 3)}
                               for box, kind, c, p in self.kinds]}


def verify(det: Detections, cls: str, target: int, config: VerifyConfig, crosscheck: int | None = None,
           degenerate: bool = False) -> Verification:
    return Verification(target=target, kinds=detection_kinds(det, cls, config), crosscheck=crosscheck,
                        degenerate=degenerate)


FLAT = 1e-3  # an image whose pixels vary less than this (in 0..1) is one colour: nothing was drawn


def degenerate(images: torch.Tensor) -> list[bool]:
    """Per image of ``[B, 3, H, W]`` in 0..1: not an image at all (a value not finite, or one flat colour,
    e.g. all black) — what a broken token or model produces, and no detector should be asked about."""
    import torch

    flat = images.flatten(1)
    finite = torch.isfinite(flat).all(dim=1)
    return [bool(not ok or spread < FLAT) for ok, spread in zip(finite, flat.nan_to_num(0.0).std(dim=1))]
