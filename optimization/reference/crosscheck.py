"""The independent cross-check counter of the reference world: connected components on the clean background.

It shares nothing with the detector (no learning, no boxes from YOLO), so agreement between the two on
generated images is evidence that the detector's counts can be trusted there. It only works on this world's
plain light backgrounds, which is all it is for.
"""

from __future__ import annotations

import cv2
import numpy as np

MIN_AREA = 6  # pixels; smaller blobs are noise, not objects (the smallest rendered object covers ~25)
THRESHOLD = 60.0  # RGB distance from the background colour that marks a foreground pixel


def foreground_components(image: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Boxes (x0, y0, x1, y1) of the foreground blobs of an HxWx3 uint8 image."""
    img = image.astype(np.float32)
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
    background = np.median(border, axis=0)
    mask = (np.linalg.norm(img - background, axis=-1) > THRESHOLD).astype(np.uint8)
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=4)
    boxes = []
    for x, y, w, h, area in stats[1:n]:
        if area >= MIN_AREA:
            boxes.append((int(x), int(y), int(x + w), int(y + h)))
    return boxes


def crosscheck_count(image: np.ndarray) -> int:
    return len(foreground_components(image))
