"""Training of the reference YOLO detector (``tally reference train-detector``).

The detector must see **generated** images as a person does, so it is trained mostly on images that look
generated but whose truth is known (``write_detector_dataset``):

- ``render``: rendered scenes, a share degraded (blur, noise, contrast loss);
- ``autoencoder``: rendered scenes sent through the shared autoencoder and back;
- ``sdedit``: rendered scenes re-noised part way (strength ``SDEDIT_STRENGTH``) and denoised by each
  reference generator with the scene's caption, so shapes take the generators' own look (soft edges,
  rounded corners) while staying where they were drawn;
- ``generated``: each generator's own images from a caption stating a count, kept only where two independent
  witnesses agree: the cross-check judge finds every component one whole, separate shape, and finds as many as
  the caption asked for, each with the fill of the class asked (``FILL_RANGE``). They are labelled on the judge's
  boxes with the caption's class: shapes as the generators really draw them (rounded circles, soft squares),
  which the other sources only approximate.

An autoencoder or SDEdit example is labelled on the cross-check judge's components (``_judged_labels``): a
component holding one rendered object that still looks whole takes its class and the judge's tight box;
shapes the generator merged or made touch, and deformed ones, are ``unclear``; an example where a shape
vanished or a blob appeared is dropped. A share of the scenes also holds hard negatives (merged blobs,
touching pairs, fragments, smears, stripes; ``scenes.NEGATIVE_KINDS``) labelled as the ``unclear`` class, which
verification treats as doubt (``VerifyConfig.doubt_classes``): the detector can then verify alone, as
production detectors must. Built from ultralytics' ``yolov8n.yaml`` (no pretrained download), or trained
further from earlier weights (the shipped detector: renders first, then generated-looking examples); a small batch,
AdamW and a short warmup make it learn in minutes; ``--resume`` goes on from ultralytics' ``last.pt``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import InvalidRequest
from ..guidance import guidance_per_step
from ..seeds import DETECTOR_TRAIN, DETECTOR_VAL
from .crosscheck import judge
from . import REFERENCE_CONFIG, shipped_fields
from .scenes import CLASSES, COLOURS, IMAGE_SIZE, MAX_COUNT, UNCLEAR, Scene, degrade, render_scene

DETECTOR_IMGSZ = 128  # 64 px scenes are upsampled 2x: small objects then span several stride-8 cells
DETECTOR_CLASSES = (*CLASSES, UNCLEAR)  # the doubt class last, so object class indices match ``CLASSES``
# Share of the examples holding 1..3 hard negatives, whatever the sources (``negative_share``): a first
# ``--generated`` run, whose generated examples diluted them to 0.245, named fewer hard negatives unclear.
NEGATIVE_SHARE = 0.35
SOURCES = {"render": 0.25, "autoencoder": 0.3, "sdedit": 0.45}  # share of the examples from each source
# ... with the generators' own images (``--generated``; measured in the README)
SOURCES_GENERATED = {"render": 0.2, "autoencoder": 0.2, "sdedit": 0.3, "generated": 0.3}
SDEDIT_STRENGTH = (0.25, 0.55)  # how far a scene is re-noised before the generator denoises it
# Generated examples: counts asked in proportion to the count, as crowds are kept far more rarely than pairs.
COUNTS = np.arange(1, MAX_COUNT + 1)
COUNT_WEIGHTS = COUNTS / COUNTS.sum()
# A generated example's shapes must look like the class asked for: their fill (area / box area) within what
# shapes of that class have after SDEdit, whose truth is known (1st..99th percentile of 1,000 SDEdit examples),
# so a circle drawn for "crosses" is not taught as a cross; and no side under MIN_SIDE (a speck is not an object).
FILL_RANGE = {"circle": (0.65, 0.9), "square": (0.77, 1.0), "triangle": (0.46, 0.78), "cross": (0.5, 0.72)}
MIN_SIDE = 6
MAX_TRIES = 8  # images tried per kept autoencoder, SDEdit or generated example before the source gives up

Progress = Callable[[int, int], None]
Labelled = list[tuple[int, tuple[int, int, int, int]]]  # (class id, box in pixels)


def _labels(scene: Scene) -> Labelled:
    labelled = [(o.class_id, o.box) for o in scene.objects]
    return labelled + [(DETECTOR_CLASSES.index(UNCLEAR), n.box) for n in scene.negatives]


def _judged_labels(image: np.ndarray, labelled: Labelled) -> Labelled | None:
    """The rendered labels moved onto the judge's components of a generated image, or None where the rendered
    truth no longer tells what is there (a labelled shape vanished, or a blob appeared that was never drawn).

    A component holding exactly one rendered object and looking like one whole shape takes that object's class;
    a component holding several (shapes the generator merged or made touch), a hard negative, or a deformed
    object is ``unclear``: generated-looking doubt, which the detector must learn to refuse."""
    found = judge(image)
    members: list[list[int]] = [[] for _ in found.boxes]
    for class_id, box in labelled:
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        inside = [i for i, b in enumerate(found.boxes) if b[0] <= cx < b[2] and b[1] <= cy < b[3]]
        if len(inside) != 1:
            return None
        members[inside[0]].append(class_id)
    if any(not m for m in members):
        return None
    unclear = DETECTOR_CLASSES.index(UNCLEAR)
    return [(m[0] if len(m) == 1 and whole else unclear, box)
            for m, box, whole in zip(members, found.boxes, found.whole)]


class Generators:
    """The shared autoencoder and each generator's text-to-image and img2img pipelines, for autoencoder, SDEdit
    and generated examples."""

    def __init__(self, pipelines: Sequence[str | Path]):
        import torch
        from diffusers import StableDiffusionImg2ImgPipeline

        from ..pipelines import load_pipeline

        self.torch = torch
        self.img2img, self.text2img, self.samplers = [], [], []
        for path in pipelines:
            self.samplers.append(json.loads((Path(path) / REFERENCE_CONFIG).read_text())["sampler"])  # as shipped
            pipe = load_pipeline(path, torch.float32, shipped_fields(path)["vae"])
            pipe.set_progress_bar_config(disable=True)
            self.text2img.append(pipe)
            parts = {k: v for k, v in pipe.components.items() if k != "image_encoder"}
            img2img = StableDiffusionImg2ImgPipeline(**parts, requires_safety_checker=False)
            img2img.set_progress_bar_config(disable=True)
            self.img2img.append(img2img)
        self.vae = self.img2img[0].vae

    def _tensor(self, images: list[Image.Image]):
        arr = np.stack([np.asarray(im) for im in images]).astype(np.float32) / 127.5 - 1
        return self.torch.from_numpy(arr).permute(0, 3, 1, 2)

    @staticmethod
    def _arrays(x) -> list[np.ndarray]:
        return list(((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy())

    def round_trip(self, images: list[Image.Image]) -> list[np.ndarray]:
        with self.torch.no_grad():
            latents = self.vae.encode(self._tensor(images)).latent_dist.mean
            return self._arrays(self.vae.decode(latents).sample)

    def sdedit(self, k: int, images: list[Image.Image], prompts: list[str], strength: float, seed: int) -> list[np.ndarray]:
        sampler = self.samplers[k]
        generator = self.torch.Generator().manual_seed(seed)
        out = self.img2img[k](prompt=prompts, image=self._tensor(images) * 0.5 + 0.5, strength=strength,
                              num_inference_steps=2 * sampler["num_inference_steps"],
                              guidance_scale=sampler["guidance_scale"], generator=generator, output_type="np")
        return list((out.images * 255).round().astype(np.uint8))

    def generate(self, k: int, prompts: list[str], seed: int) -> list[np.ndarray]:
        sampler = dict(self.samplers[k])  # as served: each step guided by its scale where the model has a schedule
        if schedule := sampler.pop("guidance_schedule", None):
            sampler["callback_on_step_end"] = guidance_per_step(schedule)
        out = self.text2img[k](prompt=prompts, generator=self.torch.Generator().manual_seed(seed), output_type="np",
                               **sampler)
        return list((out.images * 255).round().astype(np.uint8))


def _generated_labels(image: np.ndarray, cls: str, count: int) -> Labelled | None:
    """The judge's boxes as ``cls`` objects where the judge finds ``count`` whole, separate shapes that look like
    ``cls`` (``FILL_RANGE``, ``MIN_SIDE``); else None."""
    found = judge(image)
    lo, hi = FILL_RANGE[cls]
    if (not found.clean or found.count != count or not all(lo <= f <= hi for f in found.fills)
            or min(min(b[2] - b[0], b[3] - b[1]) for b in found.boxes) < MIN_SIDE):
        return None
    return [(CLASSES.index(cls), box) for box in found.boxes]


def negative_share(shares: dict[str, float]) -> float:
    """The share of rendered scenes holding hard negatives, so that ``NEGATIVE_SHARE`` of all examples hold some
    whatever the sources (generated examples hold none)."""
    return min(1.0, NEGATIVE_SHARE / (1 - shares.get("generated", 0.0)))


def _scene(scene_seed: int, rng: np.random.Generator, negatives_share: float) -> Scene:
    mixed = rng.random() < 0.25
    negatives = int(rng.integers(1, 4)) if rng.random() < negatives_share else 0
    count = int(rng.integers(1, MAX_COUNT - negatives + 1))
    return render_scene(scene_seed, count=count, mixed=mixed, negatives=negatives)


def _examples(n: int, base: int, generators: Generators | None, rng: np.random.Generator,
              progress: Callable[[], None], batch: int = 32, shares: dict[str, float] = SOURCES):
    """``n`` (source, image, labels) triples from the sources in ``shares`` (renders only without
    generators). A source whose examples the judge keeps too rarely (under 1 in ``MAX_TRIES``) hands the rest of
    its share to renders, so a weak generator cannot stall the dataset."""
    from .scenes import caption

    shares = shares if generators else {"render": 1.0}
    quota = {s: int(round(n * p)) for s, p in shares.items()}
    quota["render"] += n - sum(quota.values())
    negatives = negative_share(shares)
    seed = base
    for source in ("autoencoder", "sdedit", "generated", "render"):
        wanted, made, tried = quota.get(source, 0), 0, 0
        while made < wanted:
            if source != "render" and tried >= MAX_TRIES * wanted + batch:
                quota["render"] += wanted - made
                break
            first, seed = seed, seed + batch
            tried += batch
            # a generated example has no scene: the generator draws from the caption alone
            scenes = [] if source == "generated" else [_scene(s, np.random.default_rng(s + 7), negatives)
                                                       for s in range(first, seed)]
            if source == "generated":
                asked = [(CLASSES[int(rng.integers(len(CLASSES)))], list(COLOURS)[int(rng.integers(len(COLOURS)))],
                          int(rng.choice(COUNTS, p=COUNT_WEIGHTS))) for _ in range(batch)]
                images = generators.generate(int(rng.integers(len(generators.text2img))),
                                             [caption(*a) for a in asked], seed)
                labels = [_generated_labels(im, cls, n) for im, (cls, _, n) in zip(images, asked)]
            elif source == "render":
                images = [np.asarray(degrade(s.image, rng) if rng.random() < 0.5 else s.image) for s in scenes]
                labels = [_labels(s) for s in scenes]
            else:
                if source == "autoencoder":
                    images = generators.round_trip([s.image for s in scenes])
                else:
                    k = int(rng.integers(len(generators.img2img)))
                    prompts = ["" if len({o.cls for o in s.objects}) > 1 else
                               caption(s.objects[0].cls, s.objects[0].colour, s.count) for s in scenes]
                    images = generators.sdedit(k, [s.image for s in scenes], prompts,
                                               float(rng.uniform(*SDEDIT_STRENGTH)), seed)
                labels = [_judged_labels(im, _labels(s)) for im, s in zip(images, scenes)]
            for image, labelled in zip(images, labels):
                if labelled is not None and made < wanted:
                    made += 1
                    progress()
                    yield source, image, labelled


def write_detector_dataset(root: Path, n_train: int, n_val: int, seed: int = 0, progress: Progress | None = None,
                           pipelines: Sequence[str | Path] = (), generated: bool = False) -> tuple[Path, dict]:
    """Write an ultralytics dataset (images, labels, data.yaml); returns the yaml path and the examples per
    source. Without ``pipelines`` every example is a render; ``generated`` adds the generators' own images."""
    root = Path(root)
    if root.exists():
        shutil.rmtree(root)
    generators = Generators(pipelines) if pipelines else None
    total, done, sources = n_train + n_val, 0, {}

    def tick() -> None:
        nonlocal done
        done += 1
        if progress:
            progress(done, total)

    for split, n, base in (("train", n_train, DETECTOR_TRAIN), ("val", n_val, DETECTOR_VAL)):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        rng = np.random.default_rng(base + seed)
        for i, (source, image, labelled) in enumerate(_examples(n, base + seed * 100_000, generators, rng, tick,
                                                                   shares=SOURCES_GENERATED if generated else SOURCES)):
            sources[source] = sources.get(source, 0) + 1
            Image.fromarray(image).save(root / "images" / split / f"{i:06d}.png")
            lines = []
            for class_id, (x0, y0, x1, y1) in labelled:
                cx, cy = (x0 + x1) / 2 / IMAGE_SIZE, (y0 + y1) / 2 / IMAGE_SIZE
                w, h = (x1 - x0) / IMAGE_SIZE, (y1 - y0) / IMAGE_SIZE
                lines.append(f"{class_id} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}")
            (root / "labels" / split / f"{i:06d}.txt").write_text("\n".join(lines) + "\n")
    names = "\n".join(f"  {i}: {name}" for i, name in enumerate(DETECTOR_CLASSES))
    data_yaml = root / "data.yaml"
    data_yaml.write_text(f"path: {root.resolve()}\ntrain: images/train\nval: images/val\nnames:\n{names}\n")
    return data_yaml, sources


def train_detector(
    data_yaml: Path,
    out: Path,
    run_dir: Path,
    epochs: int,
    batch: int = 16,
    device: str = "cpu",
    seed: int = 0,
    on_epoch: Callable[[int, int], None] | None = None,
    resume: bool = False,
    start_from: Path | None = None,
) -> dict:
    """Train YOLO on ``data_yaml`` from its yaml, or from the weights ``start_from``, and copy the final weights
    to ``out``; returns val metrics. ``resume`` goes on from the run's ``last.pt`` (ultralytics keeps the
    optimizer and epoch in it)."""
    from ultralytics import YOLO

    last = Path(run_dir) / "detector" / "weights" / "last.pt"
    if resume and not last.is_file():
        raise InvalidRequest(f"nothing to resume: no {last}")
    model = YOLO(str(last) if resume else str(start_from) if start_from else "yolov8n.yaml")
    if on_epoch:
        # ultralytics fires this once more after the last epoch (its final validation): the bar stops at the total
        model.add_callback("on_fit_epoch_end",
                           lambda trainer: on_epoch(min(trainer.epoch + 1, trainer.epochs), trainer.epochs))
    if resume:
        model.train(resume=True)
    else:
        model.train(
            data=str(data_yaml), epochs=epochs, imgsz=DETECTOR_IMGSZ, batch=batch, device=device, workers=0,
            seed=seed, deterministic=True, optimizer="AdamW", lr0=0.004, warmup_epochs=0.5, cos_lr=True,
            close_mosaic=max(1, epochs // 5), mosaic=1.0, scale=0.25, translate=0.1,
            flipud=0.0,  # an upside-down triangle is not a triangle of this world
            fliplr=0.5, amp=False, plots=False, verbose=False, project=str(run_dir), name="detector",
            exist_ok=True,
        )
    best = Path(model.trainer.best)
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(best if best.exists() else Path(model.trainer.last), out)
    metrics = model.trainer.metrics or {}
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
