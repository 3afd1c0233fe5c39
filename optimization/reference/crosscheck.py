"""The independent cross-check counter of the reference world: connected components on the clean background.

It shares nothing with the detector (no learning, no boxes from YOLO), so agreement between the two on
generated images is evidence that the detector's counts can be trusted there. It only works on this world's
plain light backgrounds, which is all it is for.

``judge`` also says whether an image is **clean**: every blob looks like one whole shape (a plausible size,
square-ish, solid enough, not twice the size of its neighbours) and there are no specks. A speck is a blob too
small or too faint to be a shape this world draws: a few pixels, or a stain whose strongest pixel is not half as far
from the background as the faintest colour drawn. It is not counted (a person asked for nine circles sees nine
circles on a stained background), and the image is not clean. Two touching shapes
are one component; a clean image cannot hold them, so the judge's count of a clean image is what a person
would count. The benchmarks compare the detector with the judge on clean images only.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

MIN_AREA = 6  # pixels; smaller blobs are noise, not objects (the smallest rendered object covers ~25)
# RGB distance the strongest pixel of a shape reaches: every colour drawn is >= ~250 from every background. Fainter
# blobs are the generators' background stains: on the bench's generated images (both models) the detector finds 8
# of 293 blobs of 3..7 px under 100, and 4,608 of 4,821 above (docs/measured.md, "Detector").
MIN_PEAK = 100.0
THRESHOLD = 60.0  # RGB distance from the background colour that marks a foreground pixel
# What one whole shape of this world looks like as a component (rendered sizes are 7..15 px).
SIDE = (5, 17)  # bounding-box side in pixels
MAX_ASPECT = 1.6  # a touching pair is about 2:1
MIN_FILL = 0.3  # area / box area: triangles ~0.5, crosses ~0.55, circles ~0.79, squares 1
MAX_AREA_RATIO = 2.6  # to the median area of the image's components (one scene's sizes span up to ~2.5x in area)


@dataclass(frozen=True)
class Judgement:
    count: int  # components that are not specks
    clean: bool  # every component is one plausible whole shape, and no specks
    boxes: list[tuple[int, int, int, int]]
    whole: list[bool]  # per box: does it look like one whole shape
    areas: list[int]  # per box: its foreground pixels

    @property
    def fills(self) -> list[float]:
        """Per box: area / box area (triangles ~0.5, crosses ~0.55, circles ~0.79, squares 1 when rendered)."""
        return [a / ((b[2] - b[0]) * (b[3] - b[1])) for b, a in zip(self.boxes, self.areas)]


def _components(image: np.ndarray) -> tuple[list[tuple[int, int, int, int]], list[int], list[bool]]:
    """Boxes, areas, and whether each blob is a speck (``MIN_AREA``, ``MIN_PEAK``)."""
    img = image.astype(np.float32)
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
    distance = np.linalg.norm(img - np.median(border, axis=0), axis=-1)
    n, labels, stats, _ = cv2.connectedComponentsWithStats((distance > THRESHOLD).astype(np.uint8), connectivity=4)
    peaks = np.zeros(n, dtype=np.float32)
    np.maximum.at(peaks, labels.ravel(), distance.ravel())
    boxes = [(int(x), int(y), int(x + w), int(y + h)) for x, y, w, h, _ in stats[1:n]]
    areas = [int(a) for a in stats[1:n, 4]]
    return boxes, areas, [a < MIN_AREA or p < MIN_PEAK for a, p in zip(areas, peaks[1:])]


def foreground_components(image: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Boxes (x0, y0, x1, y1) of the foreground blobs of an HxWx3 uint8 image, specks left out."""
    boxes, _, specks = _components(image)
    return [b for b, speck in zip(boxes, specks) if not speck]


def crosscheck_count(image: np.ndarray) -> int:
    return len(foreground_components(image))


def _whole_shape(box: tuple[int, int, int, int], area: int, median_area: float) -> bool:
    w, h = box[2] - box[0], box[3] - box[1]
    return (SIDE[0] <= min(w, h) and max(w, h) <= SIDE[1] and max(w, h) / min(w, h) <= MAX_ASPECT
            and area / (w * h) >= MIN_FILL and area <= MAX_AREA_RATIO * median_area)


def judge(image: np.ndarray) -> Judgement:
    """The components' count, and whether each is one clean whole shape (see the module docstring)."""
    boxes, areas, specks = _components(image)
    kept = [(b, a) for b, a, speck in zip(boxes, areas, specks) if not speck]
    median = float(np.median([a for _, a in kept])) if len(kept) >= 3 else float("inf")
    whole = [_whole_shape(b, a, median) for b, a in kept]
    return Judgement(count=len(kept), clean=bool(kept) and not any(specks) and all(whole), boxes=[b for b, _ in kept],
                     whole=whole, areas=[a for _, a in kept])
