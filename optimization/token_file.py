"""The header of a count-token file, read without torch (the API validates uploads with it).

A safetensors file is an 8-byte little-endian header length, a JSON header (tensor specs and
``__metadata__``), then the tensor bytes.
"""

from __future__ import annotations

import json
import struct

_MAX_HEADER = 1 << 20


def read_header(data: bytes) -> dict:
    """The safetensors header of a token file (tensor specs and ``__metadata__``); ValueError if corrupt."""
    if len(data) < 8:
        raise ValueError("not a safetensors file (too short)")
    (n,) = struct.unpack("<Q", data[:8])
    if n > _MAX_HEADER or 8 + n > len(data):
        raise ValueError("not a safetensors file (bad header length)")
    try:
        header = json.loads(data[8:8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError("not a safetensors file (header is not JSON)") from None
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        start, end = spec.get("data_offsets", (0, -1))
        if not (0 <= start <= end <= len(data) - 8 - n):
            raise ValueError(f"corrupt token file: tensor {name!r} lies outside the file")
    return header


def token_info(data: bytes) -> dict:
    """Key and metadata of a Tally token file, from its header alone."""
    header = read_header(data)
    meta = header.get("__metadata__") or {}
    missing = {"model_fingerprint", "object", "count"} - set(meta)
    if missing:
        raise ValueError(f"not a Tally count token: header lacks {', '.join(sorted(missing))}")
    if not str(meta["count"]).isdigit():
        raise ValueError("not a Tally count token: count is not a number")
    key_id = f"{meta['object']}-{int(meta['count'])}-{meta['model_fingerprint']}"
    tensors = {k: v["shape"] for k, v in header.items() if k != "__metadata__"}
    return {"key": key_id, "model": meta["model_fingerprint"], "object": meta["object"], "count": int(meta["count"]),
            "init_word": meta.get("init_word"), "tensors": tensors,
            "metadata": json.loads(meta.get("metadata") or "{}"), "size": len(data)}
