"""Training of the reference YOLO detector on rendered scenes (``tally reference train-detector``).

The detector is built from ultralytics' ``yolov8n.yaml`` (no pretrained download) and trained on
rendered scenes, a share of them degraded (blur, noise, contrast loss) the way generated images are,
so that it counts the reference generator's images as well as clean renders. A share of the scenes also
holds hard negatives (merged blobs, fragments, smears, stripes; ``scenes.NEGATIVE_KINDS``) labelled as the
``unclear`` class, which verification treats as doubt (``VerifyConfig.doubt_classes``): the detector can
then verify alone, as production detectors must.
Notes from the field: a short run from scratch learns nothing with ultralytics' defaults; a small batch,
AdamW and a short warmup are what make it learn in minutes.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..seeds import DETECTOR_TRAIN, DETECTOR_VAL
from .scenes import CLASSES, IMAGE_SIZE, MAX_COUNT, UNCLEAR, degrade, render_scene

DETECTOR_IMGSZ = 128  # 64 px scenes are upsampled 2x: small objects then span several stride-8 cells
DETECTOR_CLASSES = (*CLASSES, UNCLEAR)  # the doubt class last, so object class indices match ``CLASSES``
NEGATIVE_SHARE = 0.35  # scenes holding 1..3 hard negatives

Progress = Callable[[int, int], None]


def write_detector_dataset(
    root: Path, n_train: int, n_val: int, seed: int = 0, progress: Progress | None = None
) -> Path:
    """Write an ultralytics dataset (images, labels, data.yaml) of rendered scenes; returns the yaml path."""
    root = Path(root)
    if root.exists():
        shutil.rmtree(root)
    total, done = n_train + n_val, 0
    for split, n, base in (("train", n_train, DETECTOR_TRAIN), ("val", n_val, DETECTOR_VAL)):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for i in range(n):
            scene_seed = base + seed * 100_000 + i
            rng = np.random.default_rng(scene_seed + 7)
            mixed = rng.random() < 0.25
            negatives = int(rng.integers(1, 4)) if rng.random() < NEGATIVE_SHARE else 0
            count = int(rng.integers(1, MAX_COUNT - negatives + 1))
            scene = render_scene(scene_seed, count=count, mixed=mixed, negatives=negatives)
            image = degrade(scene.image, rng) if rng.random() < 0.5 else scene.image
            image.save(root / "images" / split / f"{i:06d}.png")
            labelled = [(o.class_id, o.box) for o in scene.objects]
            labelled += [(DETECTOR_CLASSES.index(UNCLEAR), n.box) for n in scene.negatives]
            lines = []
            for class_id, (x0, y0, x1, y1) in labelled:
                cx, cy = (x0 + x1) / 2 / IMAGE_SIZE, (y0 + y1) / 2 / IMAGE_SIZE
                w, h = (x1 - x0) / IMAGE_SIZE, (y1 - y0) / IMAGE_SIZE
                lines.append(f"{class_id} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}")
            (root / "labels" / split / f"{i:06d}.txt").write_text("\n".join(lines) + "\n")
            done += 1
            if progress:
                progress(done, total)
    names = "\n".join(f"  {i}: {name}" for i, name in enumerate(DETECTOR_CLASSES))
    data_yaml = root / "data.yaml"
    data_yaml.write_text(f"path: {root.resolve()}\ntrain: images/train\nval: images/val\nnames:\n{names}\n")
    return data_yaml


def train_detector(
    data_yaml: Path,
    out: Path,
    run_dir: Path,
    epochs: int,
    batch: int = 16,
    device: str = "cpu",
    seed: int = 0,
    on_epoch: Callable[[int, int], None] | None = None,
) -> dict:
    """Train YOLO from its yaml on ``data_yaml`` and copy the final weights to ``out``; returns val metrics."""
    from ultralytics import YOLO

    model = YOLO("yolov8n.yaml")
    if on_epoch:
        model.add_callback("on_fit_epoch_end", lambda trainer: on_epoch(trainer.epoch + 1, trainer.epochs))
    model.train(
        data=str(data_yaml),
        epochs=epochs,
        imgsz=DETECTOR_IMGSZ,
        batch=batch,
        device=device,
        workers=0,
        seed=seed,
        deterministic=True,
        optimizer="AdamW",
        lr0=0.004,
        warmup_epochs=0.5,
        cos_lr=True,
        close_mosaic=max(1, epochs // 5),
        mosaic=1.0,
        scale=0.25,
        translate=0.1,
        flipud=0.0,  # an upside-down triangle is not a triangle of this world
        fliplr=0.5,
        amp=False,
        plots=False,
        verbose=False,
        project=str(run_dir),
        name="detector",
        exist_ok=True,
    )
    best = Path(model.trainer.best)
    last = Path(model.trainer.last)
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(best if best.exists() else last, out)
    metrics = model.trainer.metrics or {}
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
