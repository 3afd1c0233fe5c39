"""Pictures for people: images with their detections drawn, sample grids (PIL only; plots live in
``tally.benchmarks.plots``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from PIL import Image, ImageDraw

if TYPE_CHECKING:  # no torch at import time: the API draws boxes with this module
    import torch


def to_pil(image: torch.Tensor) -> Image.Image:
    """A ``[3, H, W]`` tensor in [0, 1] as an RGB image."""
    arr = (image.detach().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(arr)


def to_uint8(images: torch.Tensor) -> list:
    """``[B, 3, H, W]`` in [0, 1] as a list of HxWx3 uint8 arrays."""
    return list((images.detach().clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy())


def draw_boxes(image: Image.Image, boxes, scale: int = 4, colour=(255, 0, 160)) -> Image.Image:
    """The image enlarged ``scale`` times (nearest) with one rectangle per box."""
    big = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    draw = ImageDraw.Draw(big)
    for x0, y0, x1, y1 in boxes:
        draw.rectangle((x0 * scale, y0 * scale, x1 * scale - 1, y1 * scale - 1), outline=colour, width=max(1, scale // 2))
    return big


KIND_COLOURS = {"confident": (0, 160, 60), "ambiguous": (240, 140, 0), "unclear": (220, 0, 0),
                "other_class": (40, 90, 230)}


def draw_kinds(image: Image.Image, kinds, scale: int = 4) -> Image.Image:
    """The image enlarged ``scale`` times with each detection of ``counter.detection_kinds`` drawn in its kind's
    colour (``KIND_COLOURS``) and labelled with its confidence, where known (and its class, for another class)."""
    big = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    draw = ImageDraw.Draw(big)
    for (x0, y0, x1, y1), kind, cls, confidence in kinds:
        colour = KIND_COLOURS[kind]
        draw.rectangle((x0 * scale, y0 * scale, x1 * scale - 1, y1 * scale - 1), outline=colour, width=max(1, scale // 2))
        if confidence is None:
            continue
        label = f"{confidence:.2f}".lstrip("0")
        label = label if kind != "other_class" else f"{cls[:3]}{label}"
        if scale >= 2:
            draw.text((x0 * scale + 1, y0 * scale), label, fill=colour)
    return big


def legend(width: int) -> Image.Image:
    """One strip naming the colours of ``draw_kinds``."""
    strip = Image.new("RGB", (width, 14), "white")
    draw = ImageDraw.Draw(strip)
    x = 3
    for kind, colour in KIND_COLOURS.items():
        draw.rectangle((x, 3, x + 8, 11), fill=colour)
        draw.text((x + 11, 1), kind.replace("_", " "), fill="black")
        x += 14 + 7 * len(kind)
    return strip


def with_legend(picture: Image.Image) -> Image.Image:
    out = Image.new("RGB", (picture.width, picture.height + 14), "white")
    out.paste(legend(picture.width), (0, 0))
    out.paste(picture, (0, 14))
    return out


def grid(images: list[Image.Image], columns: int, labels: list[str] | None = None) -> Image.Image:
    """Tiles images in rows of ``columns``, each with an optional caption strip under it; a caption wider than
    its tile wraps at spaces (rather than run into its neighbour's)."""
    w, h = images[0].size
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    lines = [_wrap(draw, label, w - 4) for label in labels] if labels else []
    strip = 12 * max(map(len, lines)) + 2 if lines else 0
    rows = (len(images) + columns - 1) // columns
    canvas = Image.new("RGB", (columns * w, rows * (h + strip)), "white")
    draw = ImageDraw.Draw(canvas)
    for i, im in enumerate(images):
        x, y = (i % columns) * w, (i // columns) * (h + strip)
        canvas.paste(im, (x, y))
        for j, line in enumerate(lines[i] if lines else ()):
            draw.text((x + 3, y + h + 1 + 12 * j), line, fill="black")
    return canvas


def _wrap(draw: ImageDraw.ImageDraw, text: str, width: float) -> list[str]:
    lines = [""]
    for word in text.split(" "):
        joined = f"{lines[-1]} {word}".strip()
        if lines[-1] and draw.textlength(joined) > width:
            lines.append(word)
        else:
            lines[-1] = joined
    return lines


def png_bytes(image) -> bytes:
    """A ``[3, H, W]`` tensor in [0, 1] as PNG bytes."""
    import io

    buffer = io.BytesIO()
    to_pil(image).save(buffer, format="PNG")
    return buffer.getvalue()
