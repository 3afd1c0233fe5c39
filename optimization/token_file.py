"""Count-token files without torch: the key, the header check and the atomic write, each defined once.

A token file is a diffusers textual-inversion safetensors file: an 8-byte little-endian header length, a
JSON header (tensor specs and ``__metadata__``), then the tensor bytes. Tally's metadata names the key
(model fingerprint, object, count). The API validates uploads and ``TokenStore`` indexes files with this
module alone; ``count_token.CountToken`` adds the tensors.
"""

from __future__ import annotations

import json
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from .errors import InvalidRequest

FORMAT_VERSION = "1"
SUFFIX = ".safetensors"
_MAX_HEADER = 1 << 20
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
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InvalidRequest("not a safetensors file (header is not JSON)") from None
    if not isinstance(header, dict):
        raise InvalidRequest("not a safetensors file (header is not an object)")
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(spec, dict) or not isinstance(spec.get("shape"), list):
            raise InvalidRequest(f"corrupt token file: tensor {name[:40]!r} has no shape")
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
    if not str(meta["count"]).isdigit():
        raise InvalidRequest(f"{name} is not a Tally count token (count is not a number)")
    return TokenKey(str(meta["model_fingerprint"]), str(meta["object"]), int(meta["count"]))


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
            "init_word": meta.get("init_word"), "tensors": tensors, "metadata": metadata(meta), "size": len(data)}


def write_atomic(path: Path, data: bytes) -> Path:
    """Write through a temporary file and rename: a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return path
