"""``YoloCounter``: the ``Counter`` over any ultralytics YOLO detection model, on image tensors.

The counter runs the detection network directly on ``[B, 3, H, W]`` tensors in [0, 1] (resized to the
detector's input size), then ultralytics' own NMS. Counting and the differentiable potential read the
same raw predictions, so what the loss optimizes is what the count reports.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from .config import VerifyConfig
from .counter import Detections
from .errors import InvalidRequest


class YoloCounter:
    """Counts objects of named classes with an ultralytics YOLO model kept resident."""

    def __init__(self, weights: str | Path, device: str | torch.device = "cpu", config: VerifyConfig = VerifyConfig()):
        from ultralytics import YOLO

        if not Path(weights).is_file():
            raise InvalidRequest(f"detector weights not found: {weights}")
        yolo = YOLO(str(weights))
        self.config = config
        self.device = torch.device(device)
        self.net = yolo.model.float().eval().to(self.device)
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.names: list[str] = [yolo.names[i] for i in sorted(yolo.names)]  # every class, doubt classes too
        # Requestable objects: the doubt classes (config.doubt_classes) come last, so indices stay aligned.
        self.classes: list[str] = [n for n in self.names if n not in config.doubt_classes]
        if self.names[:len(self.classes)] != self.classes:
            raise InvalidRequest(f"doubt classes {config.doubt_classes} must come after the object classes "
                                 f"in the detector's names {self.names}")
        self.imgsz = int(yolo.model.args.get("imgsz", 640)) if isinstance(yolo.model.args, dict) else 640
        # NMS keeps everything down to the ambiguous band, so verification sees the doubtful detections too.
        self.nms_floor = min(0.1, config.ambiguous_floor, config.presence_floor or 1.0)
        if config.mirrored_view:  # a head it cannot mirror is refused when the model loads, not on every job
            with torch.no_grad():
                self._unmirror(self._forward(torch.zeros(1, 3, self.imgsz, self.imgsz, device=self.device)))

    def raw(self, images: torch.Tensor) -> torch.Tensor:
        """Raw predictions ``[B, 4 + nc, A]`` (xywh in detector pixels, then class scores), differentiable; with
        ``config.mirrored_view``, the surer of the image's and its mirror image's."""
        x = F.interpolate(images.to(self.device), size=(self.imgsz, self.imgsz), mode="bilinear", align_corners=False)
        if not self.config.mirrored_view:
            return self._forward(x)
        both = self._forward(torch.cat([x, x.flip(-1)]))
        seen, mirrored = both[:len(x)], self._unmirror(both[len(x):])
        return torch.cat([(seen[:, :4] + mirrored[:, :4]) / 2, torch.maximum(seen[:, 4:], mirrored[:, 4:])], dim=1)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net(x)
        return y[0] if isinstance(y, (list, tuple)) else y

    def _unmirror(self, raw: torch.Tensor) -> torch.Tensor:
        """Predictions of a mirrored image, put back where the image's own are: each level's grid of anchors
        (row by row, ``stride`` pixels apart) reversed along x, and box centres mirrored."""
        sides = [self.imgsz // int(stride) for stride in self.net.stride.tolist()]
        cells = [side * side for side in sides]
        if sum(cells) != raw.shape[-1]:  # e.g. several anchors a cell, or NMS in the head
            raise InvalidRequest(f"mirrored_view needs a detection head with one prediction per grid cell; this one "
                                 f"gives {raw.shape[-1]} for {sum(cells)} cells")
        levels = raw.split(cells, dim=-1)
        out = torch.cat([level.reshape(*raw.shape[:2], side, side).flip(-1).reshape(level.shape)
                         for level, side in zip(levels, sides)], dim=-1)
        return torch.cat([self.imgsz - out[:, :1], out[:, 1:]], dim=1)

    @torch.no_grad()
    def detect(self, images: torch.Tensor) -> list[Detections]:
        return self.detections_from_raw(self.raw(images), tuple(images.shape[-2:]))

    def class_scores(self, raw: torch.Tensor) -> torch.Tensor:
        # YOLO's raw class scores are already after the sigmoid. Their plain sum over-counts (several
        # predictions fire per object), hence the loss divides the potential by a scale from the NMS count.
        return raw[:, 4:4 + len(self.names)]

    @torch.no_grad()
    def detections_from_raw(self, raw: torch.Tensor, image_size: tuple[int, int]) -> list[Detections]:
        from ultralytics.utils.nms import non_max_suppression

        height, width = image_size
        preds = non_max_suppression(raw.detach(), conf_thres=self.nms_floor, iou_thres=self.config.nms_iou,
                                    nc=len(self.names), max_det=300)
        sx, sy = width / self.imgsz, height / self.imgsz
        out = []
        for det in preds:
            det = det.cpu()
            out.append(Detections(
                boxes=[(float(b[0]) * sx, float(b[1]) * sy, float(b[2]) * sx, float(b[3]) * sy) for b in det[:, :4]],
                confidences=[float(c) for c in det[:, 4]],
                classes=[self.names[int(k)] for k in det[:, 5]],
            ))
        return out
