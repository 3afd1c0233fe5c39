"""The reference world: a scene renderer and the small models the project trains on it and ships.

It makes Tally runnable and measurable offline: the shipped pipeline loads with diffusers'
``from_pretrained`` and the detector with ultralytics' ``YOLO``, exactly like SDXL-Turbo and COCO YOLO.
"""

import json
from pathlib import Path

from .scenes import CLASSES, COLOURS, IMAGE_SIZE, MAX_COUNT, MIN_COUNT, PLURALS, Scene, render_scene

WEIGHTS_DIR = Path(__file__).parent / "weights"
PIPELINE_PATH = WEIGHTS_DIR / "pipeline"
PIPELINE_WEB_PATH = WEIGHTS_DIR / "pipeline-web"  # reference-web: web-like captions (see ``captions``)
DETECTOR_PATH = WEIGHTS_DIR / "detector.pt"
REFERENCE_CONFIG = "tally_reference.json"  # sampler defaults and classes, beside model_index.json
AUTOENCODER_PATH = PIPELINE_PATH / "vae"  # shared by both generators (``tally reference train-autoencoder``)


def shipped_fields(pipeline: str | Path) -> dict:
    """The ``ModelSpec`` fields a reference pipeline folder was trained for: its sampler (its ``REFERENCE_CONFIG``),
    and the shared autoencoder where the folder holds none of its own."""
    sampler = json.loads((Path(pipeline) / REFERENCE_CONFIG).read_text())["sampler"]
    return {"num_inference_steps": sampler["num_inference_steps"], "guidance_scale": sampler["guidance_scale"],
            "guidance_rescale": sampler.get("guidance_rescale", 0.0),
            "guidance_schedule": sampler.get("guidance_schedule", []),
            "vae": None if (Path(pipeline) / "vae").is_dir() else str(AUTOENCODER_PATH)}

__all__ = [
    "AUTOENCODER_PATH", "CLASSES", "COLOURS", "DETECTOR_PATH", "IMAGE_SIZE", "MAX_COUNT", "MIN_COUNT", "PIPELINE_PATH", "PIPELINE_WEB_PATH",
    "PLURALS", "REFERENCE_CONFIG", "Scene", "WEIGHTS_DIR", "render_scene", "shipped_fields",
]
