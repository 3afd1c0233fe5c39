"""Count-token files without torch: the key, the header check and the atomic write, each defined once.

A token file is a diffusers textual-inversion safetensors file: an 8-byte little-endian header length, a
JSON header (tensor specs and ``__metadata__``), then the tensor bytes. Tally's metadata names the key
(model fingerprint, object, count). The API validates uploads and ``TokenStore`` indexes files with this
module alone; ``count_token.CountToken`` adds the tensors. ``validate_token`` checks an uploaded file whole
(header, key, tensors and their values) before anything is written.
"""

from __future__ import annotations

import json
import os
import re
import struct
import tempfile
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from .errors import InvalidRequest

FORMAT_VERSION = "1"
SUFFIX = ".safetensors"
# The SD family's tensor name; the same string as ``pipelines.PLACEHOLDER`` (which needs torch to import;
# tests/test_hostile.py pins the two equal).
PLACEHOLDER = "<tally-count>"
SDXL_TENSORS = frozenset({"clip_l", "clip_g"})
FLOAT_DTYPES = {"F32": "<f4", "F16": "<f2", "BF16": "<u2"}  # BF16: the high half of an F32
_MAX_HEADER = 1 << 20
_MAX_COUNT_DIGITS = 6  # int() of a longer digit string is never needed (and past 4300 digits it raises)
_OBJECT = re.compile(r"[A-Za-z][A-Za-z0-9 _-]{0,63}")  # detector class names ("traffic light"); no path tricks
_FINGERPRINT = re.compile(r"[0-9a-f]{16}")
_KEY_ID = re.compile(r"(?P<object>.+)-(?P<count>\d{1,3})-(?P<model>[0-9a-f]{16})")


@dataclass(frozen=True)
class TokenKey:
    """The identity of a count token; ``model`` is the text encoders' fingerprint."""

    model: str
    object: str
    count: int

    def __post_init__(self):
        if not _FINGERPRINT.fullmatch(str(self.model)):
            raise InvalidRequest(f"model fingerprint must be 16 hex digits, got {str(self.model)[:40]!r}")
        if not _OBJECT.fullmatch(str(self.object)):
            raise InvalidRequest(f"object must be a class name (letters, digits, space, _ or -; at most 64), "
                                 f"got {str(self.object)[:40]!r}")
        if not isinstance(self.count, int) or not 1 <= self.count <= 999:
            raise InvalidRequest(f"count must be an integer in 1..999, got {self.count!r}")

    @property
    def id(self) -> str:
        return f"{self.object}-{self.count}-{self.model}"

    @property
    def filename(self) -> str:
        return self.id + SUFFIX

    @classmethod
    def parse(cls, key_id: str) -> "TokenKey":
        match = _KEY_ID.fullmatch(key_id)
        if not match:
            raise InvalidRequest(f"not a token key: {key_id[:80]!r} (expected OBJECT-COUNT-FINGERPRINT)")
        return cls(match["model"], match["object"], int(match["count"]))


def read_header(data: bytes) -> dict:
    """The safetensors header (tensor specs and ``__metadata__``); InvalidRequest if it is not one."""
    if len(data) < 8:
        raise InvalidRequest("not a safetensors file (too short)")
    (n,) = struct.unpack("<Q", data[:8])
    if n > _MAX_HEADER or 8 + n > len(data):
        raise InvalidRequest("not a safetensors file (bad header length)")
    try:
        header = json.loads(data[8:8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):  # RecursionError: absurdly nested JSON
        raise InvalidRequest("not a safetensors file (header is not JSON)") from None
    if not isinstance(header, dict):
        raise InvalidRequest("not a safetensors file (header is not an object)")
    for name, spec in header.items():
        if name == "__metadata__":
            if spec is not None and not (isinstance(spec, dict) and all(isinstance(v, str) for v in spec.values())):
                raise InvalidRequest("corrupt token file: __metadata__ must map names to strings")
            continue
        if not isinstance(spec, dict) or not isinstance(spec.get("shape"), list):
            raise InvalidRequest(f"corrupt token file: tensor {name[:40]!r} has no shape")
        if not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**31 for d in spec["shape"]):
            raise InvalidRequest(f"corrupt token file: tensor {name[:40]!r} has a shape that is not sizes")
        offsets = spec.get("data_offsets")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)
                and 0 <= offsets[0] <= offsets[1] <= len(data) - 8 - n):
            raise InvalidRequest(f"corrupt token file: tensor {name[:40]!r} lies outside the file")
    return header


def header_key(meta: dict, name: str = "token file") -> TokenKey:
    """The key a token file's metadata names; InvalidRequest unless it is a well-formed Tally token."""
    if not isinstance(meta, dict):
        raise InvalidRequest(f"{name} is not a Tally count token (no metadata)")
    missing = {"model_fingerprint", "object", "count"} - set(meta)
    if missing:
        raise InvalidRequest(f"{name} is not a Tally count token (header lacks {', '.join(sorted(missing))})")
    count = str(meta["count"])
    if not re.fullmatch(r"[0-9]+", count):  # ASCII digits only: "²".isdigit() holds but int("²") raises
        raise InvalidRequest(f"{name} is not a Tally count token (count is not a number: {count[:20]!r})")
    if len(count.lstrip("0")) > _MAX_COUNT_DIGITS:
        raise InvalidRequest(f"count must be an integer in 1..999, got {count[:20]}... ({len(count)} digits)")
    return TokenKey(str(meta["model_fingerprint"]), str(meta["object"]), int(count))


def header_stated(meta: dict, max_count: int = 10**_MAX_COUNT_DIGITS - 1,
                  crowd_words: Collection[str] | None = None) -> int | str | None:
    """What the token's prompts state in place of its count (stated-number calibration), if anything: a number
    in 1..``max_count``, or a crowd word ("many"), one of ``crowd_words`` where the model's are known (None:
    any lowercase word)."""
    raw = meta.get("stated_count")
    if raw is None:
        return None
    raw = str(raw)
    if re.fullmatch(r"[0-9]{1,3}", raw) and 1 <= int(raw) <= max_count:
        return int(raw)
    if re.fullmatch(r"[a-z]{1,20}", raw) and (crowd_words is None or raw in crowd_words):
        return raw
    allowed = f"an integer in 1..{max_count}"
    if crowd_words is None:
        allowed += " or a lowercase word"
    elif crowd_words:
        allowed += f" or this model's crowd word ({', '.join(map(repr, crowd_words))})"
    raise InvalidRequest(f"stated_count must be {allowed}, got {raw[:20]!r}")


def metadata(meta: dict) -> dict:
    try:
        value = json.loads(meta.get("metadata") or "{}")
    except json.JSONDecodeError:
        raise InvalidRequest("corrupt token file: metadata is not JSON") from None
    return value if isinstance(value, dict) else {}


def token_info(data: bytes) -> dict:
    """Key and metadata of a Tally token file, from its header alone."""
    header = read_header(data)
    meta = header.get("__metadata__") or {}
    key = header_key(meta)
    tensors = {k: v["shape"] for k, v in header.items() if k != "__metadata__"}
    return {"key": key.id, "model": key.model, "object": key.object, "count": key.count,
            "init_word": meta.get("init_word"), "stated_count": header_stated(meta), "tensors": tensors, "metadata": metadata(meta), "size": len(data)}


def validate_token(data: bytes, classes: Iterable[str] | None, max_count: int,
                   dims: Mapping[str, int] | None = None, family: str | None = None,
                   max_norms: Mapping[str, float] | None = None, crowd_words: Collection[str] | None = None) -> dict:
    """``token_info`` of a token file checked whole, for a model with these detector ``classes`` (None: not
    known, not checked) and ``max_count``: a Tally token (its key well formed), an object among the classes,
    count in 1..max_count, tensors named exactly ``PLACEHOLDER`` (SD family) or exactly clip_l + clip_g
    (SDXL), each a float (F32/F16/BF16) ``[1, dim]`` of finite values; ``dims`` (encoder name -> width, when
    the model's are known) and ``family`` ("sd" / "sdxl") pin the layout further; ``max_norms`` (encoder name
    -> longest vector the model accepts, ``TextToImage.token_norm_bounds``) bounds the values; a stated word must
    be one of ``crowd_words`` (the model's crowd word; None: not known). Torch-free (numpy).
    Every failure is InvalidRequest saying what is wrong."""
    header = read_header(data)
    meta = header.get("__metadata__") or {}
    key = header_key(meta)
    if meta.get("tally_format", FORMAT_VERSION) != FORMAT_VERSION:
        raise InvalidRequest(f"token format {meta['tally_format'][:20]!r} is not supported (this server reads "
                             f"format {FORMAT_VERSION})")
    if classes is not None and key.object not in classes:
        raise InvalidRequest(f"object {key.object!r} is not a class of the model; known objects: "
                             f"{', '.join(classes)}")
    if not 1 <= key.count <= max_count:
        raise InvalidRequest(f"count must be between 1 and {max_count} for this model, got {key.count}")
    header_stated(meta, max_count, crowd_words)
    encoders = _check_layout({k: v for k, v in header.items() if k != "__metadata__"}, dims, family)
    _check_values(data, encoders, max_norms)
    return token_info(data)


def _check_layout(specs: dict, dims: Mapping[str, int] | None, family: str | None) -> dict[str, str]:
    """The header's tensors against the token layouts (and the model's encoders, where known); tensor name ->
    encoder name."""
    names = set(specs)
    if names == {PLACEHOLDER}:
        encoders = {PLACEHOLDER: "clip_l"}
    elif names == SDXL_TENSORS:
        encoders = {"clip_l": "clip_l", "clip_g": "clip_g"}
    else:
        shown = ", ".join(repr(n[:40]) for n in sorted(names)[:5]) + (", ..." if len(names) > 5 else "")
        raise InvalidRequest(f"a token holds exactly one tensor {PLACEHOLDER!r} (SD family) or exactly 'clip_l' "
                             f"and 'clip_g' (SDXL); this file holds {shown or 'none'}")
    expected = set(dims) if dims else {"sdxl": {"clip_l", "clip_g"}, "sd": {"clip_l"}}.get(family or "")
    if expected is not None and set(encoders.values()) != expected:
        raise InvalidRequest(f"the token's tensors ({', '.join(sorted(names))}) do not fit this model's text "
                             f"encoders ({', '.join(sorted(expected))})")
    for name, spec in specs.items():
        dtype, shape = spec.get("dtype"), spec["shape"]
        if dtype not in FLOAT_DTYPES:
            raise InvalidRequest(f"tensor {name!r}: dtype {str(dtype)[:20]!r}; a token is F32, F16 or BF16")
        if len(shape) != 2 or shape[0] != 1 or shape[1] < 1:
            raise InvalidRequest(f"tensor {name!r}: shape {shape[:4]}; a token is [1, dim]")
        width = (dims or {}).get(encoders[name])
        if width is not None and shape[1] != width:
            raise InvalidRequest(f"tensor {name!r}: shape {shape}; this model's {encoders[name]} encoder "
                                 f"needs [1, {width}]")
    return encoders


def _check_values(data: bytes, encoders: dict[str, str], max_norms: Mapping[str, float] | None) -> None:
    """The safetensors parser itself (offsets, sizes, overlaps, the JSON it accepts), then every value finite
    and each vector's norm within the model's bound."""
    import numpy as np
    from safetensors import SafetensorError, deserialize

    try:
        tensors = dict(deserialize(data))
    except (SafetensorError, ValueError, TypeError, OverflowError) as exc:
        raise InvalidRequest(f"corrupt token file: {str(exc)[:200]}") from None
    for name, view in tensors.items():
        values = np.frombuffer(bytes(view["data"]), dtype=FLOAT_DTYPES[view["dtype"]])
        if view["dtype"] == "BF16":
            values = (values.astype(np.uint32) << 16).view(np.float32)
        if values.size != view["shape"][1]:
            raise InvalidRequest(f"tensor {name!r}: {values.size} values for shape {view['shape']}")
        if not np.isfinite(values).all():
            raise InvalidRequest(f"tensor {name!r}: holds NaN or infinite values")
        bound, norm = (max_norms or {}).get(encoders[name]), float(np.linalg.norm(values.astype(np.float64)))
        if bound is not None and norm > bound:
            raise InvalidRequest(f"tensor {name!r}: norm {norm:.3g}; this model's tokens stay below {bound:.3g} "
                                 "(a few times its longest word embedding)")


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> Path:
    """Write through a temporary file and rename: a reader never sees half a file, and concurrent writers
    (processes or threads) each write their own temporary file, so the last rename wins and none fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # mkstemp makes it 0600; tokens are read by other processes of the deployment
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)  # nothing half-written stays behind (a full disk, a read-only store)
        raise
    return path
