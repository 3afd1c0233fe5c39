"""Shared by the benchmarks: accuracy summaries, tables, rendered scenes as tensors."""

from __future__ import annotations

import socket
from collections import defaultdict
from collections.abc import Callable

import numpy as np

Progress = Callable[[int, int], None]


def summarize(pairs: list[tuple[int, int]]) -> dict:
    """Exact-count rate, mean absolute error and mean detected count of (target, detected) pairs."""
    if not pairs:
        return {"exact": 0.0, "mae": 0.0, "mean_detected": 0.0, "n": 0}
    t = np.array([p[0] for p in pairs])
    d = np.array([p[1] for p in pairs])
    return {"exact": round(float((t == d).mean()), 4), "mae": round(float(np.abs(t - d).mean()), 4),
            "mean_detected": round(float(d.mean()), 3), "n": len(pairs)}


def per_count(pairs: list[tuple[int, int]]) -> dict[str, dict]:
    by = defaultdict(list)
    for p in pairs:
        by[p[0]].append(p)
    return {str(k): summarize(v) for k, v in sorted(by.items())}


def markdown_table(per_count_stats: dict[str, dict], overall: dict) -> str:
    lines = ["| count | exact | MAE | mean detected | n |", "|---:|---:|---:|---:|---:|"]
    for c, s in list(per_count_stats.items()) + [("all", overall)]:
        lines.append(f"| {c} | {s['exact']:.3f} | {s['mae']:.3f} | {s['mean_detected']:.2f} | {s['n']} |")
    return "\n".join(lines)


def scene_tensor(images: list):
    """PIL scenes as a ``[B, 3, H, W]`` tensor in [0, 1]."""
    import torch

    return torch.from_numpy(np.stack([np.asarray(im) for im in images])).permute(0, 3, 1, 2).float() / 255


def free_port() -> int:
    """A loopback port free now, for a private Redis or API."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
