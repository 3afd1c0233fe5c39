"""The reference world's shared autoencoder (``tally reference train-autoencoder``): an AutoencoderKL,
64 x 64 x 3 <-> 16 x 16 x 8, trained on full-size scenes of 1..12 objects with the loss weighted toward edges,
so that a round trip keeps corners and the gaps between neighbours (a merged pair is one object to any
counter). Both generators share it, frozen (``t2i``). Resumable (``TrainingCheckpoint``)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from ..seeds import AUTOENCODER_TRAIN, T2I_TRAIN
from .captions import faithful_caption, scene_count, web_caption
from .checkpoint import TrainingCheckpoint
from .scenes import CLASSES, GAP, IMAGE_SIZE, MAX_COUNT, MIN_COUNT, render_scene

Progress = Callable[[int, int], None]
Stage = Callable[[str, int], Progress]


LATENT_CHANNELS = 8  # 4 x 4 pixels -> 8 numbers: enough to keep a 3-pixel gap between two shapes


@dataclass
class AutoencoderTrainConfig:
    scenes: int = 20_000
    steps: int = 1200
    batch: int = 16
    lr: float = 1e-3
    edge_weight: float = 4.0  # pixels at an edge or in a gap count this much more in the reconstruction loss
    seed: int = 0
    checkpoint_every: int = 50  # steps


def build_autoencoder():
    from diffusers import AutoencoderKL

    # Channels are cheap at 16 x 16 and dear at 64 x 64: the capacity sits where the latent is.
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=LATENT_CHANNELS, sample_size=IMAGE_SIZE,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 64, 128), layers_per_block=1, norm_num_groups=16,
    )


CROWD_FROM = 6  # the counts a ``crowd_weight`` favours by default: 6 and up, where the generators miscount most


def faithful_count(rng: np.random.Generator, crowd_weight: float = 1.0, crowd_from: int = CROWD_FROM) -> int:
    """A faithful scene's count: uniform over 1-12, or counts from ``crowd_from`` up ``crowd_weight`` times as
    likely as the rest (1 keeps the uniform draw, and with it the random stream the shipped weights saw)."""
    if crowd_weight == 1.0:
        return int(rng.integers(MIN_COUNT, MAX_COUNT + 1))
    counts = np.arange(MIN_COUNT, MAX_COUNT + 1)
    weights = np.where(counts >= crowd_from, crowd_weight, 1.0)
    return int(rng.choice(counts, p=weights / weights.sum()))


def render_training_set(n: int, seed: int, progress: Progress | None = None,
                        captions: Literal["faithful", "web"] = "faithful",
                        base: int = T2I_TRAIN, gap: int = GAP,
                        crowd_weight: float = 1.0, crowd_from: int = CROWD_FROM) -> tuple[torch.Tensor, list[str]]:
    """Scenes as a uint8 tensor [n, 3, H, W] and one caption each (fixed per image, like web data); scene
    seeds start at ``base`` + ``seed`` x 1,000,000; ``gap``: least space between shapes, in pixels;
    ``crowd_weight``, ``crowd_from``: see ``faithful_count`` (web scenes keep their habitual counts)."""
    images = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    texts = []
    rng = np.random.default_rng(seed)
    write = web_caption if captions == "web" else faithful_caption
    for i in range(n):
        cls = CLASSES[int(rng.integers(len(CLASSES)))]
        count = scene_count(cls, rng) if captions == "web" else faithful_count(rng, crowd_weight, crowd_from)
        scene = render_scene(base + seed * 1_000_000 + i, count=count, cls=cls, gap=gap)
        images[i] = np.asarray(scene.image)
        obj = scene.objects[0]
        texts.append(write(obj.cls, obj.colour, scene.count, rng))
        if progress and (i % 500 == 0 or i == n - 1):
            progress(i + 1, n)
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), texts


def to_unit(x: torch.Tensor) -> torch.Tensor:
    return x.float() / 127.5 - 1.0


def edge_weights(x: torch.Tensor, weight: float) -> torch.Tensor:
    """1 on flat areas, 1 + ``weight`` within a pixel of an edge: corners and the gaps between shapes."""
    local_max = F.max_pool2d(x, 3, stride=1, padding=1)
    local_min = -F.max_pool2d(-x, 3, stride=1, padding=1)
    edge = ((local_max - local_min).amax(dim=1, keepdim=True) > 0.25).float()
    return 1.0 + weight * edge


def train_vae(vae, images: torch.Tensor, cfg: AutoencoderTrainConfig, generator: torch.Generator,
              progress: Progress | None = None, checkpoint: TrainingCheckpoint | None = None,
              state: dict | None = None) -> None:
    """Edge-weighted reconstruction (L1 + MSE) plus a tiny KL term, on full-size images (crops reconstruct whole
    scenes badly). ``state``: a checkpoint to go on from."""
    vae.train()
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.05)
    start = 0
    if state:
        vae.load_state_dict(state["vae"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        generator.set_state(state["generator"])
        start = state["step"]
    for step in range(start, cfg.steps):
        idx = torch.randint(0, len(images), (cfg.batch,), generator=generator)
        x = to_unit(images[idx])
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=generator)).sample
        err = (recon - x).abs() + (recon - x) ** 2
        loss = (edge_weights(x, cfg.edge_weight) * err).mean() + 1e-6 * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if checkpoint:
            checkpoint.record(loss)
        if checkpoint and checkpoint.due(step + 1, cfg.steps):
            checkpoint.save(step + 1, cfg.steps, vae=vae.state_dict(), opt=opt.state_dict(), sched=sched.state_dict(),
                            generator=generator.get_state())
        if progress:
            progress(step + 1, cfg.steps)
    vae.eval()


@torch.no_grad()
def encode_latents(vae, images: torch.Tensor, batch: int = 256, progress: Progress | None = None) -> torch.Tensor:
    """Posterior means of all images (on the autoencoder's device), scaled by its ``scaling_factor``."""
    out = []
    for i in range(0, len(images), batch):
        out.append(vae.encode(to_unit(images[i:i + batch].to(vae.device))).latent_dist.mean)
        if progress:
            progress(min(i + batch, len(images)), len(images))
    return torch.cat(out) * vae.config.scaling_factor


def train_autoencoder(out: Path, work_dir: Path, cfg: AutoencoderTrainConfig, stage: Stage | None = None,
                      resume: bool = False) -> dict:
    """Train the shared autoencoder and save it (fp16) as a diffusers ``AutoencoderKL`` folder at ``out``."""
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    started = time.perf_counter()
    checkpoint = TrainingCheckpoint(Path(work_dir) / "autoencoder.ckpt", cfg.checkpoint_every)
    state = checkpoint.load(cfg.steps) if resume else None
    vae = build_autoencoder()
    images, _ = render_training_set(cfg.scenes, cfg.seed, bar(stage, "render scenes", cfg.scenes),
                                    base=AUTOENCODER_TRAIN)
    train_vae(vae, images, cfg, generator, bar(stage, "train autoencoder", cfg.steps), checkpoint, state)
    with torch.no_grad():  # unit variance for the UNet: the scaling factor from the latents' std
        latents = torch.cat([vae.encode(to_unit(images[i:i + 256])).latent_dist.mean
                             for i in range(0, min(2048, len(images)), 256)])
    vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
    vae.half().save_pretrained(str(out))
    summary = {"seconds": round(time.perf_counter() - started, 1), "resumed_at": state["step"] if state else 0,
               "config": asdict(cfg)}
    (Path(out) / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def bar(stage: Stage | None, name: str, total: int) -> Progress | None:
    return stage(name, total) if stage else None
