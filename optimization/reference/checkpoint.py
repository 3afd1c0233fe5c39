"""Resumable training: the whole state of a training loop in one file, written atomically every few steps.

A loop saves its step, its modules, optimizer, learning-rate schedule, EMA and random generator; ``--resume``
loads the file and goes on from that step with the same random stream, so an interrupted run ends where an
uninterrupted one would (within the nondeterminism of CPU kernels).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..errors import InvalidRequest


class TrainingCheckpoint:
    def __init__(self, path: Path, every: int = 100):
        self.path = Path(path)
        self.every = max(1, every)

    def load(self, total: int) -> dict | None:
        """The saved state, or None if there is none; a run of another length cannot be resumed."""
        if not self.path.exists():
            return None
        state = torch.load(self.path, map_location="cpu", weights_only=False)
        if state["total"] != total:
            raise InvalidRequest(f"{self.path} holds a run of {state['total']} steps, not {total}: resume with the "
                             "options of the interrupted run")
        return state

    def due(self, step: int, total: int) -> bool:
        return step % self.every == 0 or step == total

    def save(self, step: int, total: int, **state) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        torch.save({"step": step, "total": total, **state}, tmp)
        os.replace(tmp, self.path)
