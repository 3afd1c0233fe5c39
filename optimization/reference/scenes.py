"""Scene renderer of the reference world: counted shapes on light backgrounds, deterministic per seed.

A scene holds 1..12 non-overlapping shapes of one class and colour (or, for detector training, a mix),
drawn 4x supersampled and reduced so edges are anti-aliased like photographs, and each object's exact
box in pixels. The box is rounded outward, so every anti-aliased edge pixel lies inside its box.

For the detector, a scene may also hold **hard negatives** (``NEGATIVE_KINDS``): the failures small
generators produce — two shapes merged into one blob or touching, a fragment of a shape, a smear, a stripe. They
are not objects; the detector learns them as the ``unclear`` class, so verification can refuse an image
that holds one instead of counting it as a clean object or silently missing it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
PLURALS: dict[str, str] = {"circle": "circles", "square": "squares", "triangle": "triangles", "cross": "crosses"}
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (205, 40, 40),
    "green": (35, 150, 55),
    "blue": (40, 75, 215),
    "black": (30, 30, 30),
}
UNCLEAR = "unclear"  # the detector's class for hard negatives (never a requestable object)
NEGATIVE_KINDS = ("merged", "touching", "fragment", "smear", "stripe")
IMAGE_SIZE = 64
MIN_COUNT, MAX_COUNT = 1, 12
_SUPERSAMPLE = 4
GAP = 3  # pixels kept free between boxes: shapes never touch, and a generated gap stays visible


@dataclass(frozen=True)
class SceneObject:
    cls: str
    colour: str
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels, x1/y1 exclusive

    @property
    def class_id(self) -> int:
        return CLASSES.index(self.cls)


@dataclass(frozen=True)
class Negative:
    kind: str  # one of NEGATIVE_KINDS
    box: tuple[int, int, int, int]


@dataclass
class Scene:
    seed: int
    image: Image.Image
    objects: list[SceneObject] = field(default_factory=list)
    negatives: list[Negative] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.objects)


def _size_range(count: int) -> tuple[int, int]:
    # Fewer objects may be larger; twelve objects of 14 px would not fit on 64 x 64 with gaps.
    if count <= 4:
        return 9, 15
    if count <= 8:
        return 8, 13
    return 7, 11


def _place_boxes(rng: np.random.Generator, count: int, size: int,
                 pairs: tuple[bool, ...] = (), gap: int = GAP) -> list[tuple[int, int, int, int]]:
    """``count`` boxes kept apart; a box whose entry in ``pairs`` is true holds two shapes side by side that
    touch or overlap by a pixel or two (twice as wide or tall)."""
    lo, hi = _size_range(count)
    for _ in range(200):
        boxes: list[tuple[int, int, int, int]] = []
        for i in range(count):
            for _ in range(100):
                s = int(rng.integers(lo, hi + 1))
                w = h = s
                if i < len(pairs) and pairs[i]:
                    s = int(rng.integers(lo, min(hi, (size - 4) // 2) + 1))
                    w, h = (2 * s - int(rng.integers(1, 4)), s)
                    w, h = (w, h) if rng.random() < 0.5 else (h, w)
                x0 = int(rng.integers(1, size - w - 1))
                y0 = int(rng.integers(1, size - h - 1))
                box = (x0, y0, x0 + w, y0 + h)
                if all(_apart(box, other, gap) for other in boxes):
                    boxes.append(box)
                    break
            else:
                break
        if len(boxes) == count:
            return boxes
    raise RuntimeError(f"could not place {count} objects")  # never seen for counts <= 12


def _apart(a: tuple[int, int, int, int], b: tuple[int, int, int, int], gap: int) -> bool:
    return a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    base = rng.uniform(222, 250, size=3) + rng.uniform(-6, 6, size=3)
    img = np.broadcast_to(base, (size, size, 3)).astype(np.float32).copy()
    kind = rng.integers(0, 3)  # plain, soft gradient, mild texture
    if kind == 1:
        ramp = np.linspace(-1, 1, size, dtype=np.float32)
        angle = rng.uniform(0, 2 * math.pi)
        grad = math.cos(angle) * ramp[None, :] + math.sin(angle) * ramp[:, None]
        img += grad[..., None] * rng.uniform(3, 9)
    elif kind == 2:
        noise = rng.normal(0, 1, size=(size // 8, size // 8)).astype(np.float32)
        smooth = np.asarray(Image.fromarray(noise).resize((size, size), Image.BICUBIC))
        img += smooth[..., None] * rng.uniform(2, 5)
    return np.clip(img, 0, 255)


def _draw(draw: ImageDraw.ImageDraw, cls: str, box: tuple[int, int, int, int], fill: tuple[int, int, int]) -> None:
    k = _SUPERSAMPLE
    x0, y0, x1, y1 = (v * k for v in box)
    # Shapes are drawn half a pixel inside their box so anti-aliasing never spills over it.
    m = k // 2
    x0, y0, x1, y1 = x0 + m, y0 + m, x1 - m, y1 - m
    if cls == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=fill)
    elif cls == "square":
        draw.rectangle((x0, y0, x1, y1), fill=fill)
    elif cls == "triangle":
        draw.polygon([(x0, y1), (x1, y1), ((x0 + x1) / 2, y0)], fill=fill)
    elif cls == "cross":
        w, h = x1 - x0, y1 - y0
        t = max(w, h) / 3
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        draw.rectangle((cx - t / 2, y0, cx + t / 2, y1), fill=fill)
        draw.rectangle((x0, cy - t / 2, x1, cy + t / 2), fill=fill)
    else:
        raise ValueError(f"unknown class {cls!r}; known: {', '.join(CLASSES)}")


def _draw_negative(canvas: Image.Image, kind: str, cls: str, box: tuple[int, int, int, int],
                   fill: tuple[int, int, int], rng: np.random.Generator) -> tuple[int, int, int, int]:
    """Draw one hard negative inside ``box`` (supersampled through a mask); returns its tight box in pixels."""
    k = _SUPERSAMPLE
    mask = Image.new("L", canvas.size, 0)
    draw = ImageDraw.Draw(mask)
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    if kind == "touching":  # two whole shapes that touch: one blob to the eye of a counter, not two clean objects
        s = min(w, h)
        second = (x1 - s, y0, x1, y1) if w > h else (x0, y1 - s, x1, y1)
        _draw(draw, cls, (x0, y0, x0 + s, y0 + s), 255)
        _draw(draw, cls, second, 255)
    elif kind == "merged":  # two shapes overlapping heavily: one blob, not two clean objects
        s = max(5, int(round(min(w, h) * rng.uniform(0.55, 0.7))))
        second = (x1 - s, y1 - s, x1, y1) if rng.random() < 0.5 else (x1 - s, y0, x1, y0 + s)
        _draw(draw, cls, (x0, y0, x0 + s, y0 + s), 255)
        _draw(draw, cls if rng.random() < 0.7 else CLASSES[int(rng.integers(len(CLASSES)))], second, 255)
    elif kind == "fragment":  # a piece of a shape: small, or cut by a straight edge
        if rng.random() < 0.5:
            s = int(rng.integers(3, 6))
            cx, cy = int(rng.integers(x0, max(x0 + 1, x1 - s))), int(rng.integers(y0, max(y0 + 1, y1 - s)))
            _draw(draw, cls, (cx, cy, cx + s, cy + s), 255)
        else:
            _draw(draw, cls, box, 255)
            cut = [(x0 * k, y0 * k), (x1 * k, y0 * k), (x1 * k, y1 * k)] if rng.random() < 0.5 else \
                [(x0 * k, y0 * k), ((x0 + x1) / 2 * k, y0 * k), ((x0 + x1) / 2 * k, y1 * k), (x0 * k, y1 * k)]
            draw.polygon(cut, fill=0)
    elif kind == "smear":  # a shape dragged along a direction and blurred into a streak
        s = max(4, min(w, h) // 2)
        dx, dy = (int(v) for v in rng.integers(-1, 2, size=2))
        for step in range(3):
            ox, oy = x0 + (w - s) // 2 + dx * step * 2, y0 + (h - s) // 2 + dy * step * 2
            _draw(draw, cls, (ox, oy, ox + s, oy + s), 255)
        mask = mask.filter(ImageFilter.GaussianBlur(rng.uniform(1.0, 2.0) * k))
        gain = rng.uniform(1.0, 1.6)
        mask = mask.point(lambda v: min(255, int(v * gain)))
    elif kind == "stripe":  # a thin bar across the box
        t = max(1, int(round(rng.uniform(1.0, 2.5) * k)))
        if rng.random() < 0.5:
            cy = int(rng.integers(y0, y1)) * k
            draw.rectangle((x0 * k, cy, x1 * k, cy + t), fill=255)
        else:
            cx = int(rng.integers(x0, x1)) * k
            draw.rectangle((cx, y0 * k, cx + t, y1 * k), fill=255)
    else:
        raise ValueError(f"unknown negative {kind!r}; known: {', '.join(NEGATIVE_KINDS)}")
    canvas.paste(Image.new("RGB", canvas.size, fill), (0, 0), mask)
    bbox = mask.point(lambda v: 255 if v > 64 else 0).getbbox() or (x0 * k, y0 * k, x1 * k, y1 * k)
    return bbox[0] // k, bbox[1] // k, -(-bbox[2] // k), -(-bbox[3] // k)


def render_scene(
    seed: int,
    count: int | None = None,
    cls: str | None = None,
    colour: str | None = None,
    mixed: bool = False,
    size: int = IMAGE_SIZE,
    negatives: int = 0,
    gap: int = GAP,
) -> Scene:
    """Render one scene. Unset fields are drawn from the seed; ``mixed`` gives each object its own class and colour;
    ``negatives`` adds that many hard negatives (``NEGATIVE_KINDS``) apart from the objects; ``gap`` is the least
    space between boxes in pixels."""
    rng = np.random.default_rng(seed)
    count = int(rng.integers(MIN_COUNT, MAX_COUNT + 1)) if count is None else count
    if not MIN_COUNT <= count <= MAX_COUNT:
        raise ValueError(f"count must be in {MIN_COUNT}..{MAX_COUNT}, got {count}")
    if count + negatives > MAX_COUNT:
        raise ValueError(f"count + negatives must be at most {MAX_COUNT}, got {count} + {negatives}")
    cls = CLASSES[int(rng.integers(len(CLASSES)))] if cls is None else cls
    colour = list(COLOURS)[int(rng.integers(len(COLOURS)))] if colour is None else colour
    if cls not in CLASSES:
        raise ValueError(f"unknown class {cls!r}; known: {', '.join(CLASSES)}")
    if colour not in COLOURS:
        raise ValueError(f"unknown colour {colour!r}; known: {', '.join(COLOURS)}")

    background = _background(rng, size)
    kinds = [NEGATIVE_KINDS[int(rng.integers(len(NEGATIVE_KINDS)))] for _ in range(negatives)]
    boxes = _place_boxes(rng, count + negatives, size, pairs=(False,) * count + tuple(k == "touching" for k in kinds),
                         gap=gap)
    k = _SUPERSAMPLE
    canvas = Image.fromarray(background.astype(np.uint8)).resize((size * k, size * k), Image.NEAREST)
    draw = ImageDraw.Draw(canvas)
    objects, hard = [], []

    def pick_fill() -> tuple[str, str, tuple[int, int, int]]:
        c = CLASSES[int(rng.integers(len(CLASSES)))] if mixed else cls
        col = list(COLOURS)[int(rng.integers(len(COLOURS)))] if mixed else colour
        jitter = rng.integers(-12, 13, size=3)
        return c, col, tuple(int(np.clip(v + j, 0, 255)) for v, j in zip(COLOURS[col], jitter))

    for box in boxes[:count]:
        c, col, fill = pick_fill()
        _draw(draw, c, box, fill)
        objects.append(SceneObject(c, col, box))
    for box, kind in zip(boxes[count:], kinds):
        c, _, fill = pick_fill()
        hard.append(Negative(kind, _draw_negative(canvas, kind, c, box, fill, rng)))
    # Supersampled objects are reduced with a box filter; the background keeps its own smooth texture.
    small = np.asarray(canvas.resize((size, size), Image.BOX), dtype=np.float32)
    return Scene(seed=seed, image=Image.fromarray(np.clip(small, 0, 255).astype(np.uint8)), objects=objects,
                 negatives=hard)


def degrade(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Blur, noise and contrast loss like a small generator's output, so the detector counts generated images too."""
    if rng.random() < 0.6:
        image = image.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.3, 1.1))))
    arr = np.asarray(image, dtype=np.float32)
    if rng.random() < 0.4:
        mean = arr.mean(axis=(0, 1), keepdims=True)
        arr = mean + (arr - mean) * rng.uniform(0.75, 1.0)
    if rng.random() < 0.5:
        arr = arr + rng.normal(0, rng.uniform(1, 6), size=arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def caption(cls: str, colour: str, count: int) -> str:
    """The clean caption of a scene, in the prompt template the whole project uses."""
    noun = cls if count == 1 else PLURALS[cls]
    return f"a photo of {count} {colour} {noun}"


def noisy_caption(cls: str, colour: str, count: int, rng: np.random.Generator) -> str:
    """A caption as careless as a web caption: for 4+ objects the stated count is often off by one or two.

    This is deliberate: the reference text-to-image model should follow class and colour but miscount,
    the way real models do, so that count optimization has something to fix.
    """
    stated = count
    if count >= 4 and rng.random() < 0.4:
        stated = count + int(rng.choice([-2, -1, 1, 2]))
        stated = min(max(stated, MIN_COUNT), MAX_COUNT)
    if count >= 3 and rng.random() < 0.08:
        noun = PLURALS[cls]
        return f"a photo of {colour} {noun}"
    return caption(cls, colour, stated)
