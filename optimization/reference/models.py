"""The reference world as model entries: the same ``ModelSpec`` a deployment writes for SDXL-Turbo.

What is particular to this world is configuration, not code paths: the sampler shipped beside the
weights, its four classes, the connected-components cross-check (it only understands these plain
backgrounds), and one library prompt per colour so a token learns the count rather than one phrasing.
"""

from __future__ import annotations

import json

from ..config import ModelSpec
from . import COLOURS, MAX_COUNT, PIPELINE_PATH, DETECTOR_PATH, CLASSES

REFERENCE_CONFIG = "tally_reference.json"  # sampler defaults and classes, beside model_index.json


def reference_model() -> ModelSpec:
    """The shipped reference pipeline and detector, verified by detector and cross-check."""
    shipped = json.loads((PIPELINE_PATH / REFERENCE_CONFIG).read_text())
    return ModelSpec(
        id="reference", pipeline=str(PIPELINE_PATH), detector=str(DETECTOR_PATH), classes=list(CLASSES),
        num_inference_steps=shipped["sampler"]["num_inference_steps"],
        guidance_scale=shipped["sampler"]["guidance_scale"], max_count=MAX_COUNT, crosscheck="components",
        library_prompts=["a photo of {count} {attribute} {objects}"], attribute_words=list(COLOURS))
