"""The reference text-to-image models: tiny ``StableDiffusionPipeline``s trained on captioned scenes.

Two trainings, each resumable (``TrainingCheckpoint``):

- ``train_autoencoder`` (``tally reference train-autoencoder``): an AutoencoderKL, 64 x 64 x 3 <-> 16 x 16 x 8,
  trained on full-size scenes of 1..12 objects with the loss weighted toward edges, so that a round trip keeps
  corners and the gaps between neighbours (a merged pair is one object to any counter). Both generators
  share it, frozen.
- ``train_t2i`` (``tally reference train-t2i``): the tokenizer, a CLIP text encoder and a
  UNet2DConditionModel with cross-attention at every resolution (the text must matter), trained jointly with
  v-prediction on a zero-terminal-SNR schedule (so a few sampling steps start from true noise). ``reference``
  learns from faithful captions (``captions.faithful_caption``), ``reference-web`` from web-like captions on
  scenes with habitual counts (``captions.web_caption``).

Both save ordinary diffusers folders. The shipped sampler is short (``SAMPLER``): count optimization
backpropagates through every step.
"""

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
from .models import REFERENCE_CONFIG
from .scenes import CLASSES, IMAGE_SIZE, MAX_COUNT, MIN_COUNT, render_scene
from .tokenizer import WORDS, build_tokenizer_files, load_tokenizer

SAMPLER = {"num_inference_steps": 4, "guidance_scale": 4.0}  # 4 steps: as exact as 6 or 8, half the cost
LATENT_CHANNELS = 8  # 4 x 4 pixels -> 8 numbers: enough to keep a 3-pixel gap between two shapes

Progress = Callable[[int, int], None]
Stage = Callable[[str, int], Progress]


@dataclass
class AutoencoderTrainConfig:
    scenes: int = 20_000
    steps: int = 1200
    batch: int = 16
    lr: float = 1e-3
    edge_weight: float = 4.0  # pixels at an edge or in a gap count this much more in the reconstruction loss
    seed: int = 0
    checkpoint_every: int = 50  # steps


@dataclass
class T2ITrainConfig:
    scenes: int = 40_000
    unet_steps: int = 2400
    unet_batch: int = 48
    unet_lr: float = 4e-4
    text_lr: float = 2e-4
    caption_dropout: float = 0.1  # empty captions teach the unconditional branch for guidance
    ema_decay: float = 0.999
    seed: int = 0
    captions: Literal["faithful", "web"] = "faithful"
    checkpoint_every: int = 50  # steps
    vae_from: str = ""  # the AutoencoderKL folder both generators share (frozen); set by the CLI
    unet_from: str = ""  # a pipeline folder whose UNet is the starting point (its drawing skill, not its text)
    text_encoder_from: str = ""  # ... and whose text encoder is (to train a shipped model further)


VARIANTS: dict[str, T2ITrainConfig] = {
    "reference": T2ITrainConfig(),
    # The web model starts from the reference UNet (it can already draw shapes and crowds) with a fresh text
    # encoder, so what it learns of numbers comes from web captions only; fewer scenes and steps do.
    "web": T2ITrainConfig(captions="web", scenes=20_000, unet_steps=1000),
}


def build_autoencoder():
    from diffusers import AutoencoderKL

    # Channels are cheap at 16 x 16 and dear at 64 x 64: the capacity sits where the latent is.
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=LATENT_CHANNELS, sample_size=IMAGE_SIZE,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 64, 128), layers_per_block=1, norm_num_groups=16,
    )


def build_components(tokenizer_dir: Path, words: tuple[str, ...] = WORDS):
    """Fresh tokenizer, text encoder, UNet and scheduler; sizes chosen for ~0.1 s per image on two CPU cores."""
    from diffusers import DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = load_tokenizer(build_tokenizer_files(tokenizer_dir, words))
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=512, num_hidden_layers=3,
        num_attention_heads=4, max_position_embeddings=tokenizer.model_max_length, projection_dim=128,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    ))
    unet = UNet2DConditionModel(
        sample_size=IMAGE_SIZE // 4, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS, layers_per_block=1,
        block_out_channels=(32, 64, 128), norm_num_groups=16, cross_attention_dim=128, attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    )
    scheduler = DDIMScheduler(
        num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
        prediction_type="v_prediction", rescale_betas_zero_snr=True, timestep_spacing="trailing",
        clip_sample=False, set_alpha_to_one=False, steps_offset=1,
    )
    return tokenizer, text_encoder, unet, scheduler


def render_training_set(n: int, seed: int, progress: Progress | None = None,
                        captions: Literal["faithful", "web"] = "faithful",
                        base: int = T2I_TRAIN) -> tuple[torch.Tensor, list[str]]:
    """Scenes as a uint8 tensor [n, 3, H, W] and one caption each (fixed per image, like web data); scene
    seeds start at ``base`` + ``seed`` x 1,000,000."""
    images = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    texts = []
    rng = np.random.default_rng(seed)
    write = web_caption if captions == "web" else faithful_caption
    for i in range(n):
        cls = CLASSES[int(rng.integers(len(CLASSES)))]
        count = scene_count(cls, rng) if captions == "web" else int(rng.integers(MIN_COUNT, MAX_COUNT + 1))
        scene = render_scene(base + seed * 1_000_000 + i, count=count, cls=cls)
        images[i] = np.asarray(scene.image)
        obj = scene.objects[0]
        texts.append(write(obj.cls, obj.colour, scene.count, rng))
        if progress and (i % 500 == 0 or i == n - 1):
            progress(i + 1, n)
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), texts


def _to_unit(x: torch.Tensor) -> torch.Tensor:
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
        x = _to_unit(images[idx])
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=generator)).sample
        err = (recon - x).abs() + (recon - x) ** 2
        loss = (edge_weights(x, cfg.edge_weight) * err).mean() + 1e-6 * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if checkpoint:
            checkpoint.record(float(loss))
        if checkpoint and checkpoint.due(step + 1, cfg.steps):
            checkpoint.save(step + 1, cfg.steps, vae=vae.state_dict(), opt=opt.state_dict(), sched=sched.state_dict(),
                            generator=generator.get_state())
        if progress:
            progress(step + 1, cfg.steps)
    vae.eval()


@torch.no_grad()
def encode_latents(vae, images: torch.Tensor, batch: int = 256, progress: Progress | None = None) -> torch.Tensor:
    """Posterior means of all images, scaled by the autoencoder's ``scaling_factor``."""
    out = []
    for i in range(0, len(images), batch):
        out.append(vae.encode(_to_unit(images[i:i + batch])).latent_dist.mean)
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
    images, _ = render_training_set(cfg.scenes, cfg.seed, _bar(stage, "render scenes", cfg.scenes),
                                    base=AUTOENCODER_TRAIN)
    train_vae(vae, images, cfg, generator, _bar(stage, "train autoencoder", cfg.steps), checkpoint, state)
    with torch.no_grad():  # unit variance for the UNet: the scaling factor from the latents' std
        latents = torch.cat([vae.encode(_to_unit(images[i:i + 256])).latent_dist.mean
                             for i in range(0, min(2048, len(images)), 256)])
    vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
    vae.half().save_pretrained(str(out))
    summary = {"seconds": round(time.perf_counter() - started, 1), "resumed_at": state["step"] if state else 0,
               "config": asdict(cfg)}
    (Path(out) / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def train_unet(unet, text_encoder, tokenizer, scheduler, latents: torch.Tensor, captions: list[str],
               cfg: T2ITrainConfig, generator: torch.Generator, progress: Progress | None = None,
               checkpoint: TrainingCheckpoint | None = None, state: dict | None = None) -> None:
    """v-prediction with min-SNR weighting; the text encoder learns jointly; EMA weights are what ship."""
    from diffusers.training_utils import EMAModel

    unet.train()
    text_encoder.train()
    opt = torch.optim.AdamW([
        {"params": unet.parameters(), "lr": cfg.unet_lr},
        {"params": text_encoder.parameters(), "lr": cfg.text_lr},
    ], weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[cfg.unet_lr, cfg.text_lr],
                                                total_steps=cfg.unet_steps, pct_start=0.03)
    ema = EMAModel(unet.parameters(), decay=cfg.ema_decay)
    ema_text = EMAModel(text_encoder.parameters(), decay=cfg.ema_decay)
    start = 0
    if state:
        unet.load_state_dict(state["unet"])
        text_encoder.load_state_dict(state["text_encoder"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        ema.load_state_dict(state["ema"])
        ema_text.load_state_dict(state["ema_text"])
        generator.set_state(state["generator"])
        start = state["step"]
    alphas_cumprod = scheduler.alphas_cumprod
    snr = alphas_cumprod / (1 - alphas_cumprod).clamp(min=1e-8)
    for step in range(start, cfg.unet_steps):
        idx = torch.randint(0, len(latents), (cfg.unet_batch,), generator=generator)
        drop = torch.rand(cfg.unet_batch, generator=generator) < cfg.caption_dropout
        texts = ["" if d else captions[i] for i, d in zip(idx.tolist(), drop.tolist())]
        ids = tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length,
                        truncation=True, return_tensors="pt").input_ids
        x0 = latents[idx]
        noise = torch.randn(x0.shape, generator=generator)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (cfg.unet_batch,), generator=generator)
        xt = scheduler.add_noise(x0, noise, t)
        target = scheduler.get_velocity(x0, noise, t)
        pred = unet(xt, t, encoder_hidden_states=text_encoder(ids)[0]).sample
        # min-SNR-5 weighting for v-prediction: w = min(snr, 5) / (snr + 1); terminal SNR 0 gets weight 0 -> floor.
        w = (torch.minimum(snr[t], torch.tensor(5.0)) / (snr[t] + 1)).clamp(min=0.05)
        loss = (w * F.mse_loss(pred, target, reduction="none").mean(dim=(1, 2, 3))).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(unet.parameters()) + list(text_encoder.parameters()), 1.0)
        opt.step()
        sched.step()
        ema.step(unet.parameters())
        ema_text.step(text_encoder.parameters())
        if checkpoint:
            checkpoint.record(float(loss))
        if checkpoint and checkpoint.due(step + 1, cfg.unet_steps):
            checkpoint.save(step + 1, cfg.unet_steps, unet=unet.state_dict(), text_encoder=text_encoder.state_dict(),
                            opt=opt.state_dict(), sched=sched.state_dict(), ema=ema.state_dict(),
                            ema_text=ema_text.state_dict(), generator=generator.get_state())
        if progress:
            progress(step + 1, cfg.unet_steps)
    ema.copy_to(unet.parameters())
    ema_text.copy_to(text_encoder.parameters())
    unet.eval()
    text_encoder.eval()


def _bar(stage: Stage | None, name: str, total: int) -> Progress | None:
    return stage(name, total) if stage else None


def train_t2i(out: Path, work_dir: Path, cfg: T2ITrainConfig, stage: Stage | None = None,
              resume: bool = False) -> dict:
    """Train tokenizer, text encoder and UNet over the shared autoencoder and save the pipeline folder at ``out``.

    ``stage(name, total)`` returns a progress callback for that stage (the CLI draws one bar per stage).
    """
    from diffusers import AutoencoderKL, StableDiffusionPipeline

    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    started = time.perf_counter()
    work_dir = Path(work_dir)
    checkpoint = TrainingCheckpoint(work_dir / "unet.ckpt", cfg.checkpoint_every)
    state = checkpoint.load(cfg.unet_steps) if resume else None
    tokenizer, text_encoder, unet, scheduler = build_components(work_dir / "tokenizer")
    if cfg.unet_from:
        from diffusers import UNet2DConditionModel

        unet = UNet2DConditionModel.from_pretrained(cfg.unet_from, subfolder="unet", torch_dtype=torch.float32)
    if cfg.text_encoder_from:  # the same tokenizer (one vocabulary for both models), so the same rows
        from transformers import CLIPTextModel

        text_encoder = CLIPTextModel.from_pretrained(cfg.text_encoder_from, subfolder="text_encoder")
    vae = AutoencoderKL.from_pretrained(cfg.vae_from, torch_dtype=torch.float32).eval()
    images, captions = render_training_set(cfg.scenes, cfg.seed, _bar(stage, "render scenes", cfg.scenes),
                                           cfg.captions)
    latents = encode_latents(vae, images, progress=_bar(stage, "encode latents", len(images)))
    del images
    train_unet(unet, text_encoder, tokenizer, scheduler, latents, captions, cfg, generator,
               _bar(stage, "train unet + text encoder", cfg.unet_steps), checkpoint, state)

    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   image_encoder=None, requires_safety_checker=False)
    # UNet and autoencoder are stored in fp16 (diffusers loads them as fp32 by default) to keep the shipped
    # weights small; the text encoder stays fp32 because transformers keeps a stored fp16 dtype on load.
    unet.half()
    vae.half()
    pipe.save_pretrained(str(out))
    config = {**asdict(cfg), "vae_from": Path(cfg.vae_from).name,  # no machine paths
              "unet_from": Path(cfg.unet_from).name if cfg.unet_from else "",
              "text_encoder_from": Path(cfg.text_encoder_from).name if cfg.text_encoder_from else ""}
    summary = {"seconds": round(time.perf_counter() - started, 1), "resumed_at": state["step"] if state else 0,
               "config": config}
    reference = {"image_size": IMAGE_SIZE, "classes": list(CLASSES), "sampler": SAMPLER, "training": summary}
    (Path(out) / REFERENCE_CONFIG).write_text(json.dumps(reference, indent=2) + "\n")
    return summary
