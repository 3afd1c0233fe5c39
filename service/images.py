"""Image encodings the API serves: the stored PNG as is, or re-encoded as JPEG or WEBP (``?format=``)."""

from __future__ import annotations

import hashlib
import io
from typing import Literal, get_args

ImageFormat = Literal["png", "jpeg", "webp"]
FORMATS: tuple[str, ...] = get_args(ImageFormat)
MEDIA_TYPES: dict[str, str] = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
QUALITY = 90  # JPEG and (lossy) WEBP; the images are small, so size matters less than fidelity


def convert(png: bytes, format: ImageFormat) -> bytes:
    """``png`` re-encoded as ``format``, same size; ``png`` itself for ``"png"``. JPEG has no alpha, so the
    image is flattened to RGB for it; WEBP keeps an alpha channel if there is one."""
    if format == "png":
        return png
    if format not in MEDIA_TYPES:
        raise ValueError(f"unknown image format {format!r}; allowed: {', '.join(FORMATS)}")
    from PIL import Image

    image = Image.open(io.BytesIO(png))
    keep_alpha = format == "webp" and ("A" in image.getbands() or "transparency" in image.info)
    image = image.convert("RGBA" if keep_alpha else "RGB")
    buffer = io.BytesIO()
    image.save(buffer, format=format.upper(), quality=QUALITY)
    return buffer.getvalue()


def enlarge(png: bytes, scale: int) -> bytes:
    """``png`` ``scale`` times larger, nearest neighbour (a 64 px image stays crisp)."""
    from PIL import Image

    image = Image.open(io.BytesIO(png))
    buffer = io.BytesIO()
    image.resize((image.width * scale, image.height * scale), Image.NEAREST).save(buffer, format="PNG")
    return buffer.getvalue()


def cache_headers(body: bytes, filename: str, max_age: int) -> dict[str, str]:
    """An image's headers: a strong ETag of its bytes, ``private`` caching for ``max_age`` seconds (how long
    results are kept; it never changes), and its file name for a download."""
    return {"ETag": f'"{hashlib.sha256(body).hexdigest()[:32]}"',
            "Cache-Control": f"private, max-age={max_age}, immutable",
            "Content-Disposition": f'inline; filename="{filename}"'}
