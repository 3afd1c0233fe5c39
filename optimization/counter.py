"""``YoloCounter``: object counts from any ultralytics YOLO detection model, on image tensors.

The counter runs the detection network directly on ``[B, 3, H, W]`` tensors in [0, 1] (resized to the
detector's input size), then ultralytics' own NMS. Counting and, later, the differentiable potential read
the same raw predictions, so what the loss optimizes is what the count reports.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .prompts import resolve_class

COUNT_CONFIDENCE = 0.5  # a detection counts from this confidence on
NMS_IOU = 0.5
# Conservative verification: every object must be confidently detected and nothing of the class may sit in
# the ambiguous band below; a wrong "verified" is worse than an honest "not verified".
VERIFY_CONFIDENCE = 0.7
AMBIGUOUS_FLOOR = 0.15


@dataclass
class Detections:
    """Detections of one image, in that image's pixel coordinates, sorted by confidence."""

    boxes: list[tuple[float, float, float, float]]
    confidences: list[float]
    classes: list[str]

    def of(self, cls: str, min_confidence: float = COUNT_CONFIDENCE) -> "Detections":
        keep = [i for i, (c, p) in enumerate(zip(self.classes, self.confidences)) if c == cls and p >= min_confidence]
        return Detections([self.boxes[i] for i in keep], [self.confidences[i] for i in keep], [cls] * len(keep))

    def count(self, cls: str, min_confidence: float = COUNT_CONFIDENCE) -> int:
        return len(self.of(cls, min_confidence).boxes)


@dataclass
class Verification:
    """The verdict on one image: ``verified`` only if every check agrees on exactly ``target`` objects."""

    target: int
    detected_count: int  # detections of the class at COUNT_CONFIDENCE
    confident: int  # at VERIFY_CONFIDENCE
    ambiguous: int  # in [AMBIGUOUS_FLOOR, VERIFY_CONFIDENCE)
    crosscheck: int | None  # the independent counter's count, where there is one
    detections: Detections

    @property
    def verified(self) -> bool:
        return (self.confident == self.target and self.ambiguous == 0
                and (self.crosscheck is None or self.crosscheck == self.target))

    @property
    def miss(self) -> float:
        """How far from verified: count error first, then doubt (ambiguous detections, cross-check error)."""
        doubt = self.ambiguous + (abs(self.crosscheck - self.target) if self.crosscheck is not None else 0)
        return abs(self.detected_count - self.target) + 0.1 * doubt


def verify(det: Detections, cls: str, target: int, crosscheck: int | None = None) -> Verification:
    mine = det.of(cls, AMBIGUOUS_FLOOR)
    confident = sum(c >= VERIFY_CONFIDENCE for c in mine.confidences)
    return Verification(target=target, detected_count=det.count(cls), confident=confident,
                        ambiguous=len(mine.confidences) - confident, crosscheck=crosscheck,
                        detections=det.of(cls))


class YoloCounter:
    """Counts objects of a named class with an ultralytics YOLO model kept resident."""

    def __init__(self, weights: str | Path, device: str | torch.device = "cpu"):
        from ultralytics import YOLO

        if not Path(weights).is_file():
            raise FileNotFoundError(f"detector weights not found: {weights}")
        yolo = YOLO(str(weights))
        self.device = torch.device(device)
        self.net = yolo.model.float().eval().to(self.device)
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.classes: list[str] = [yolo.names[i] for i in sorted(yolo.names)]
        self.imgsz = int(yolo.model.args.get("imgsz", 640)) if isinstance(yolo.model.args, dict) else 640

    def resolve(self, name: str) -> str:
        return resolve_class(name, self.classes)

    def raw(self, images: torch.Tensor) -> torch.Tensor:
        """Raw predictions ``[B, 4 + nc, A]`` (xywh in detector pixels, then class scores), differentiable."""
        x = F.interpolate(images.to(self.device), size=(self.imgsz, self.imgsz), mode="bilinear", align_corners=False)
        y = self.net(x)
        return y[0] if isinstance(y, (list, tuple)) else y

    @torch.no_grad()
    def detect(self, images: torch.Tensor, min_confidence: float = 0.1) -> list[Detections]:
        """NMS detections of every class with confidence >= ``min_confidence``, per image."""
        return self.detections_from_raw(self.raw(images), tuple(images.shape[-2:]), min_confidence)

    def count(self, images: torch.Tensor, cls: str, min_confidence: float = COUNT_CONFIDENCE) -> list[int]:
        cls = self.resolve(cls)
        return [d.count(cls, min_confidence) for d in self.detect(images)]

    def class_scores(self, raw: torch.Tensor) -> torch.Tensor:
        """Per-class scores ``[B, nc, A]`` of raw predictions (already after the sigmoid)."""
        return raw[:, 4:4 + len(self.classes)]

    def potential(self, images: torch.Tensor, cls: str) -> torch.Tensor:
        """Differentiable sum of the class's scores over all raw predictions, ``[B]``.

        It over-counts (several predictions fire per object), hence the loss divides it by a scale
        derived from the NMS count.
        """
        return self.class_scores(self.raw(images))[:, self.classes.index(self.resolve(cls))].sum(-1)

    @torch.no_grad()
    def detections_from_raw(self, raw: torch.Tensor, image_size: tuple[int, int],
                            min_confidence: float = 0.1) -> list[Detections]:
        """NMS detections from raw predictions computed elsewhere (the optimizer reuses its forward pass)."""
        from ultralytics.utils.nms import non_max_suppression

        height, width = image_size
        preds = non_max_suppression(raw.detach(), conf_thres=min_confidence, iou_thres=NMS_IOU,
                                    nc=len(self.classes), max_det=300)
        sx, sy = width / self.imgsz, height / self.imgsz
        out = []
        for det in preds:
            det = det.cpu()
            out.append(Detections(
                boxes=[(float(b[0]) * sx, float(b[1]) * sy, float(b[2]) * sx, float(b[3]) * sy) for b in det[:, :4]],
                confidences=[float(c) for c in det[:, 4]],
                classes=[self.classes[int(k)] for k in det[:, 5]],
            ))
        return out
