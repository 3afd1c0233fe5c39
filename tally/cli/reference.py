"""``tally reference ...``: the offline reference world (train the shipped weights, say where they are)."""

from __future__ import annotations

import json
import re
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
    scenes: Annotated[int, typer.Option(min=8, help="Training examples.")] = 3500,
    val_scenes: Annotated[int, typer.Option(min=4, help="Validation examples.")] = 300,
    epochs: Annotated[int, typer.Option(min=1)] = 8,
    batch: Annotated[int, typer.Option(min=2)] = 16,
    seed: int = 0,
    device: str = "cpu",
    renders_only: Annotated[bool, typer.Option(help="Rendered scenes only (no autoencoder, SDEdit or generated examples).")]
    = False,
    generated: Annotated[bool, typer.Option(help="Also the generators' own images where the judge finds what was "
                                                 "asked in whole shapes (not in the shipped detector).")] = False,
    resume: Annotated[bool, typer.Option("--resume", help=RESUME_HELP)] = False,
    train_further: Annotated[bool, typer.Option("--train-further", help="Start from the weights at --out (the "
                                                                      "shipped detector) instead of the yaml.")]
    = False,
    out: Annotated[Optional[Path], typer.Option(help="Weights file; default: the shipped reference detector.")] = None,
) -> None:
    """Make examples that look generated (autoencoder round trips, SDEdit through both reference generators,
    with ``--generated`` their own images where the judge finds what was asked in whole shapes, renders) and
    train the reference YOLO detector from its yaml (no download) or further from its weights.

    The shipped detector: ``--renders-only --epochs 20 --scenes 4000``, then ``--train-further`` with the
    defaults."""
    from optimization.reference import DETECTOR_PATH, PIPELINE_PATH, PIPELINE_WEB_PATH
    from optimization.reference.detector import train_detector, write_detector_dataset

    settings = prepare()
    out = (out or DETECTOR_PATH).resolve()
    if train_further and not out.is_file():
        raise typer.BadParameter(f"no weights at {out} to train further", param_hint="--out")
    root = (settings.runtime_dir / "datasets" / "detector").resolve()
    if not (resume and (root / "data.yaml").is_file()):
        pipelines = () if renders_only else (PIPELINE_PATH, PIPELINE_WEB_PATH)
        with progress_bar("make examples", scenes + val_scenes) as update:
            data_yaml, sources = write_detector_dataset(root, scenes, val_scenes, seed=seed, progress=update,
                                                        pipelines=pipelines, generated=generated)
        console.print(f"examples per source: {sources}")
    with progress_bar("train detector (epochs)", epochs) as update:
        metrics = train_detector(root / "data.yaml", out, (settings.runtime_dir / "runs").resolve(), epochs=epochs,
                                 batch=batch, device=device, seed=seed, on_epoch=update, resume=resume,
                                 start_from=out if train_further else None)
    console.print(f"detector weights: {out}")
    console.print({k: round(v, 4) for k, v in metrics.items()})


def _stages(bar: Progress):
    """One progress bar per training stage; lines on a log (not a tty) every 5%."""

    def stage(name: str, total: int):
        task = bar.add_task(name, total=total)

        def update(done: int, _total=None) -> None:
            bar.update(task, completed=done)
            if not console.is_terminal and (done == total or done % max(1, total // 20) == 0):
                console.print(f"{name}: {done}/{total} ({bar.tasks[task].elapsed:.0f} s)")

        return update

    return stage


def _training_bars() -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=console)


RESUME_HELP = "Go on from the last checkpoint of an interrupted run with the same options."


@reference_app.command("train-autoencoder")
def train_autoencoder(
    scenes: Annotated[Optional[int], typer.Option(min=8, help="Training scenes to render.")] = None,
    steps: Annotated[Optional[int], typer.Option(min=1)] = None,
    batch: Annotated[Optional[int], typer.Option(min=2)] = None,
    seed: int = 0,
    resume: Annotated[bool, typer.Option("--resume", help=RESUME_HELP)] = False,
    out: Annotated[Optional[Path], typer.Option(help="AutoencoderKL folder; default: the shipped one.")] = None,
) -> None:
    """Train the autoencoder both reference generators share (``optimization.reference.autoencoder``).

    Unset options take the defaults that made the shipped weights; ``train-t2i`` then uses it, frozen.
    """
    from dataclasses import replace

    from optimization.reference import AUTOENCODER_PATH
    from optimization.reference.autoencoder import AutoencoderTrainConfig, train_autoencoder

    settings = prepare()
    out = (out or AUTOENCODER_PATH).resolve()
    given = {"scenes": scenes, "steps": steps, "batch": batch}
    cfg = replace(AutoencoderTrainConfig(seed=seed), **{k: v for k, v in given.items() if v is not None})
    with _training_bars() as bar:
        summary = train_autoencoder(out, (settings.runtime_dir / "runs" / "autoencoder").resolve(), cfg,
                                    stage=_stages(bar), resume=resume)
    console.print(f"autoencoder: {out} ({summary['seconds']} s)")


def _torch_device(value: str) -> str:
    """cpu, or cuda[:N] where torch sees that GPU: refused up front rather than with a stack trace mid-training."""
    if value == "cpu":
        return value
    if not re.fullmatch(r"cuda(:\d+)?", value):
        raise typer.BadParameter(f"{value!r}: expected cpu, cuda or cuda:N")
    import torch

    seen = torch.cuda.device_count()
    if int(value.partition(":")[2] or 0) >= seen:
        raise typer.BadParameter(f"{value}: this machine has {seen} CUDA GPU(s) that torch can use; use cpu")
    return value


def _unet_channels(value: Optional[str]) -> Optional[tuple[int, int, int]]:
    if value is None:
        return None
    try:
        widths = tuple(int(v) for v in value.split(","))
    except ValueError:
        widths = ()
    if len(widths) != 3 or any(w <= 0 or w % 16 for w in widths):
        raise typer.BadParameter(f"{value!r}: three comma-separated widths, each a positive multiple of 16 "
                                 "(the UNet's group norm has 16 groups), e.g. 48,96,192")
    return widths


@reference_app.command("train-t2i")
def train_t2i(
    variant: Annotated[str, typer.Option(help="reference: faithful captions; web: web-like captions (reference-web).")]
    = "reference",
    scenes: Annotated[Optional[int], typer.Option(min=8, help="Captioned training scenes to render.")] = None,
    unet_steps: Annotated[Optional[int], typer.Option(min=1)] = None,
    unet_batch: Annotated[Optional[int], typer.Option(min=2)] = None,
    gap: Annotated[Optional[int], typer.Option(min=1, max=6, help="Least space between shapes in the training "
                                                                   "scenes, pixels (twelve fit up to 6).")] = None,
    unet_channels: Annotated[Optional[str], typer.Option(callback=_unet_channels, help=(
        "A fresh UNet's three widths, e.g. 48,96,192 (multiples of 16) [default: 32,64,128, the shipped size]."))]
    = None,
    transformer_layers: Annotated[Optional[int], typer.Option(min=1, max=4, help=(
        "Transformer layers in each UNet attention block; layers added to a trained UNet start as the identity "
        "[default: the UNet's own, 1 when fresh]."))] = None,
    lr: Annotated[Optional[float], typer.Option(min=0.0, help="The UNet's peak learning rate (the text encoder's is "
                                                              "half) [default: 4e-4].")] = None,
    weight_floor: Annotated[Optional[float], typer.Option(min=0.0, max=1.0, help=(
        "Least loss weight of a timestep (min-SNR weights the high noise where layouts form at almost nothing) "
        "[default: 0.05]."))] = None,
    crowd_weight: Annotated[Optional[float], typer.Option(min=1.0, max=10.0, help=(
        "reference: how much likelier a training scene of --crowd-from to 12 objects is than one of fewer "
        "[default: 1, uniform]."))] = None,
    crowd_from: Annotated[Optional[int], typer.Option(min=2, max=12, help=(
        "reference: the least count --crowd-weight favours [default: 6]."))] = None,
    seed: int = 0,
    device: Annotated[str, typer.Option(callback=_torch_device, help="Where the models train: cpu, or cuda[:N] on a "
                                                                     "GPU (the same random stream).")] = "cpu",
    resume: Annotated[bool, typer.Option("--resume", help=RESUME_HELP)] = False,
    autoencoder: Annotated[Optional[Path], typer.Option(help="AutoencoderKL folder (frozen); default: the shipped one.")]
    = None,
    unet_from: Annotated[Optional[Path], typer.Option(help="web: the pipeline whose UNet it starts from; default: "
                                                           "the shipped reference pipeline (with --train-further: "
                                                           "--out's, or this one's to re-base a model's text encoder "
                                                           "on a newer UNet).")] = None,
    train_further: Annotated[bool, typer.Option("--train-further", help="Start from the variant's shipped UNet and "
                                                                      "text encoder (a longer training in parts).")]
    = False,
    out: Annotated[Optional[Path], typer.Option(help="Pipeline folder; default: the variant's shipped pipeline.")]
    = None,
    self_samples: Annotated[int, typer.Option(min=0, help="With --train-further: images the model draws from "
                                                          "captions stating a count; those the detector verifies and "
                                                          "the judge counts exactly join the training scenes.")] = 0,
) -> None:
    """Build and train a reference StableDiffusionPipeline (tokenizer, text encoder, UNet) over the shared autoencoder.

    Unset options take the variant's defaults (``optimization.reference.t2i.VARIANTS``), which made the
    shipped weights.
    """
    from dataclasses import replace

    from optimization.reference import AUTOENCODER_PATH, PIPELINE_PATH, PIPELINE_WEB_PATH
    from optimization.reference.t2i import VARIANTS, train_t2i

    if variant not in VARIANTS:
        raise typer.BadParameter(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}", param_hint="--variant")
    autoencoder = (autoencoder or AUTOENCODER_PATH).resolve()
    if not (autoencoder / "config.json").is_file():
        raise typer.BadParameter(f"no AutoencoderKL at {autoencoder}; train one with `tally reference "
                                 "train-autoencoder`", param_hint="--autoencoder")
    settings = prepare()
    out = (out or (PIPELINE_WEB_PATH if variant == "web" else PIPELINE_PATH)).resolve()
    if unet_channels and (train_further or variant == "web"):
        raise typer.BadParameter("a UNet trained further (or the web variant's, from the reference UNet) keeps its "
                                 "widths; --unet-channels is for a fresh reference UNet", param_hint="--unet-channels")
    given = {"scenes": scenes, "unet_steps": unet_steps, "unet_batch": unet_batch, "gap": gap,
             "unet_channels": unet_channels, "unet_lr": lr, "text_lr": lr / 2 if lr is not None else None,
             "weight_floor": weight_floor, "transformer_layers": transformer_layers, "crowd_weight": crowd_weight,
             "crowd_from": crowd_from}
    cfg = replace(VARIANTS[variant], seed=seed, vae_from=str(autoencoder),
                  **{k: v for k, v in given.items() if v is not None})
    if variant == "web" and (crowd_weight is not None or crowd_from is not None):
        raise typer.BadParameter("web scenes keep their habitual counts; --crowd-weight and --crowd-from are for "
                                 "reference", param_hint="--crowd-weight")
    if crowd_from is not None and crowd_weight is None:
        raise typer.BadParameter("--crowd-from says which counts --crowd-weight favours: give both",
                                 param_hint="--crowd-from")
    if variant == "web":  # starts from the reference UNet (see ``VARIANTS``)
        cfg = replace(cfg, unet_from=str(unet_from or PIPELINE_PATH))
    if train_further:
        cfg = replace(cfg, unet_from=str(unet_from or out), text_encoder_from=str(out))
    elif self_samples:
        raise typer.BadParameter("the images are the model's own: add --train-further", param_hint="--self-samples")
    if transformer_layers and cfg.unet_from:
        has = json.loads((Path(cfg.unet_from) / "unet" / "config.json").read_text())["transformer_layers_per_block"]
        if max(has if isinstance(has, list) else [has]) > transformer_layers:
            raise typer.BadParameter(f"the UNet it starts from has {has} per block; layers can be added, not removed",
                                     param_hint="--transformer-layers")
    with _training_bars() as bar:
        selected = _selected_samples(out, self_samples, seed, _stages(bar)) if self_samples else None
        summary = train_t2i(out, (settings.runtime_dir / "runs" / f"t2i-{variant}").resolve(), cfg,
                            stage=_stages(bar), resume=resume, device=device, self_samples=selected)
    console.print(f"pipeline: {out} ({summary['seconds']} s)")
    if selected:
        console.print(f"self-samples: {selected[2]['kept']} of {selected[2]['drawn']} kept")


def _selected_samples(pipeline: Path, n: int, seed: int, stage):
    """``self_samples.selected_samples`` of the pipeline folder at its own sampler, with the shipped detector."""
    from optimization.counter import load_counter
    from optimization.pipelines import TextToImage
    from optimization.reference.self_samples import selected_samples

    from .common import model_spec, quiet_model_loading

    quiet_model_loading()
    spec = model_spec(str(pipeline))
    return selected_samples(TextToImage.from_spec(spec), load_counter(spec), n, seed,
                            stage("draw and select self-samples", n))


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
