"""Guidance scale per denoising step (``ModelSpec.guidance_schedule``), through diffusers' ``callback_on_step_end``:
the SD and SDXL pipelines read ``_guidance_scale`` at every step. No other dependency, so the reference world's
training (which runs without the service's configuration) samples as the served models do."""

from __future__ import annotations

from collections.abc import Callable, Sequence


def guidance_per_step(schedule: Sequence[float]) -> Callable:
    """The ``callback_on_step_end`` that gives each step after the first its scale from ``schedule`` (the first
    step's is the call's ``guidance_scale``, ``schedule[0]``)."""

    def next_scale(pipe, step: int, timestep, tensors: dict) -> dict:
        if step + 1 < len(schedule):
            pipe._guidance_scale = schedule[step + 1]
        return tensors

    return next_scale
