"""Resumable training: the whole state of a training loop in one file, written atomically every few steps.

A loop saves its step, its modules, optimizer, learning-rate schedule, EMA and random generator; ``--resume``
loads the file and goes on from that step with the same random stream, so an interrupted run ends where an
uninterrupted one would (within the nondeterminism of CPU kernels).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

from ..errors import InvalidRequest


class TrainingCheckpoint:
    """The state file, and beside it ``log.jsonl``: one line per checkpoint (step, mean loss since the last one,
    seconds), the written log of the run."""

    def __init__(self, path: Path, every: int = 100):
        self.path = Path(path)
        self.every = max(1, every)
        self.log = self.path.with_name("log.jsonl")
        self._losses: list[torch.Tensor] = []
        self._started = time.perf_counter()

    def record(self, loss: torch.Tensor) -> None:
        """Keeps the loss where it is: reading it every step would make a GPU wait for the CPU."""
        self._losses.append(loss.detach())

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
        loss = float(torch.stack(self._losses).mean()) if self._losses else 0.0
        line = {"step": step, "total": total, "loss": round(loss, 5),
                "seconds": round(time.perf_counter() - self._started, 1)}
        with self.log.open("a") as log:
            log.write(json.dumps(line) + "\n")
        self._losses.clear()
