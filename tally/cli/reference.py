"""``tally reference ...``: the offline reference world (train the shipped weights, say where they are)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .common import app, console, prepare, progress_bar

reference_app = typer.Typer(help="The offline reference world: renderer, detector and pipeline.", no_args_is_help=True)
app.add_typer(reference_app, name="reference")


@reference_app.command("train-detector")
def train_detector(
    scenes: Annotated[int, typer.Option(min=8, help="Training scenes to render.")] = 4000,
    val_scenes: Annotated[int, typer.Option(min=4, help="Validation scenes.")] = 300,
    epochs: Annotated[int, typer.Option(min=1)] = 20,
    batch: Annotated[int, typer.Option(min=2)] = 16,
    seed: int = 0,
    device: str = "cpu",
    out: Annotated[Optional[Path], typer.Option(help="Weights file; default: the shipped reference detector.")] = None,
) -> None:
    """Render scenes and train the reference YOLO detector from its yaml (no download)."""
    from optimization.reference import DETECTOR_PATH
    from optimization.reference.detector import train_detector, write_detector_dataset

    settings = prepare()
    out = (out or DETECTOR_PATH).resolve()
    root = (settings.runtime_dir / "datasets" / "detector").resolve()
    with progress_bar("render scenes", scenes + val_scenes) as update:
        data_yaml = write_detector_dataset(root, scenes, val_scenes, seed=seed, progress=update)
    with progress_bar("train detector (epochs)", epochs) as update:
        metrics = train_detector(data_yaml, out, (settings.runtime_dir / "runs").resolve(), epochs=epochs,
                                 batch=batch, device=device, seed=seed, on_epoch=update)
    console.print(f"detector weights: {out}")
    console.print({k: round(v, 4) for k, v in metrics.items()})


@reference_app.command("train-t2i")
def train_t2i(
    variant: Annotated[str, typer.Option(help="reference: noisy captions; web: web-like captions (reference-web).")]
    = "reference",
    scenes: Annotated[Optional[int], typer.Option(min=8, help="Captioned training scenes to render.")] = None,
    vae_steps: Annotated[Optional[int], typer.Option(min=1)] = None,
    unet_steps: Annotated[Optional[int], typer.Option(min=1)] = None,
    unet_batch: Annotated[Optional[int], typer.Option(min=2)] = None,
    seed: int = 0,
    out: Annotated[Optional[Path], typer.Option(help="Pipeline folder; default: the variant's shipped pipeline.")]
    = None,
) -> None:
    """Build and train a reference StableDiffusionPipeline (tokenizer, text encoder, VAE, UNet).

    Unset options take the variant's defaults (``optimization.reference.t2i.VARIANTS``), which made the
    shipped weights.
    """
    from dataclasses import replace

    from optimization.reference import PIPELINE_PATH, PIPELINE_WEB_PATH
    from optimization.reference.t2i import VARIANTS, train_t2i

    if variant not in VARIANTS:
        raise typer.BadParameter(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}", param_hint="--variant")
    settings = prepare()
    out = (out or (PIPELINE_WEB_PATH if variant == "web" else PIPELINE_PATH)).resolve()
    given = {"scenes": scenes, "vae_steps": vae_steps, "unet_steps": unet_steps, "unet_batch": unet_batch}
    cfg = replace(VARIANTS[variant], seed=seed, **{k: v for k, v in given.items() if v is not None})
    cfg = replace(cfg, vae_batch=min(cfg.vae_batch, cfg.scenes))
    if variant == "web":  # the same scenes as the reference world: its autoencoder serves as is
        cfg = replace(cfg, vae_from=str(PIPELINE_PATH))
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=console) as bar:

        def stage(name: str, total: int):
            task = bar.add_task(name, total=total)

            def update(done: int, _total=None) -> None:
                bar.update(task, completed=done)
                if not console.is_terminal and (done == total or done % max(1, total // 20) == 0):
                    console.print(f"{name}: {done}/{total} ({bar.tasks[task].elapsed:.0f} s)")  # logs, not a tty

            return update

        summary = train_t2i(out, (settings.runtime_dir / "runs" / "t2i").resolve(), cfg, stage=stage)
    console.print(f"pipeline: {out} ({summary['seconds']} s)")


@reference_app.command("info")
def info(as_json: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False) -> None:
    """Where the shipped reference weights are, their classes and image size."""
    from optimization.reference import CLASSES, DETECTOR_PATH, IMAGE_SIZE, PIPELINE_PATH

    info = {"pipeline": str(PIPELINE_PATH), "detector": str(DETECTOR_PATH), "classes": list(CLASSES),
            "image_size": IMAGE_SIZE}
    if as_json:
        sys.stdout.write(json.dumps(info) + "\n")
    else:
        for key, value in info.items():
            console.print(f"{key:>10}: {value}")
