"""The reference text-to-image model: a tiny ``StableDiffusionPipeline`` trained on captioned scenes.

``tally reference train-t2i`` builds the tokenizer, a CLIP text encoder, an AutoencoderKL (64 x 64 x 3 <->
16 x 16 x 4) and a UNet2DConditionModel with cross-attention at every resolution (the text must matter),
trains the autoencoder on full-size scenes, then the UNet and text encoder jointly with v-prediction on a
zero-terminal-SNR schedule (so a few sampling steps start from true noise), and saves an ordinary diffusers
folder. Captions are deliberately noisy about the count: ``reference`` misstates large counts
(``scenes.noisy_caption``); ``reference-web`` follows web captions, which rarely state large numbers, on
scenes where each class has its habitual count (``captions``), and reuses the reference autoencoder.

The shipped sampler is short (``SAMPLER``): count optimization backpropagates through every step.
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

from ..seeds import T2I_TRAIN
from .models import REFERENCE_CONFIG
from .captions import scene_count, web_caption, web_vocabulary
from .scenes import CLASSES, IMAGE_SIZE, noisy_caption, render_scene
from .tokenizer import WORDS, build_tokenizer_files, load_tokenizer

SAMPLER = {"num_inference_steps": 4, "guidance_scale": 4.0}  # 4 steps: as exact as 6 or 8, half the cost

Progress = Callable[[int, int], None]


@dataclass
class T2ITrainConfig:
    scenes: int = 40_000
    vae_steps: int = 400
    vae_batch: int = 32
    unet_steps: int = 3500
    unet_batch: int = 48
    unet_lr: float = 4e-4
    text_lr: float = 2e-4
    caption_dropout: float = 0.1  # empty captions teach the unconditional branch for guidance
    ema_decay: float = 0.999
    seed: int = 0
    captions: Literal["noisy", "web"] = "noisy"
    vae_from: str | None = None  # a pipeline folder whose autoencoder is reused (frozen) instead of trained


VARIANTS: dict[str, T2ITrainConfig] = {
    "reference": T2ITrainConfig(),
    # Same images, so the reference autoencoder serves as is; the time goes to the UNet instead.
    "web": T2ITrainConfig(captions="web"),
}


def build_components(tokenizer_dir: Path, words: tuple[str, ...] = WORDS):
    """Fresh, randomly initialised components; sizes chosen for ~0.1 s per image on two CPU cores."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = load_tokenizer(build_tokenizer_files(tokenizer_dir, words))
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=512, num_hidden_layers=3,
        num_attention_heads=4, max_position_embeddings=tokenizer.model_max_length, projection_dim=128,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    ))
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=IMAGE_SIZE,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 64, 64), layers_per_block=1, norm_num_groups=16,
    )
    unet = UNet2DConditionModel(
        sample_size=IMAGE_SIZE // 4, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64, 128), norm_num_groups=16, cross_attention_dim=128, attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    )
    scheduler = DDIMScheduler(
        num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
        prediction_type="v_prediction", rescale_betas_zero_snr=True, timestep_spacing="trailing",
        clip_sample=False, set_alpha_to_one=False, steps_offset=1,
    )
    return tokenizer, text_encoder, vae, unet, scheduler


def render_training_set(n: int, seed: int, progress: Progress | None = None,
                        captions: Literal["noisy", "web"] = "noisy") -> tuple[torch.Tensor, list[str]]:
    """Scenes as a uint8 tensor [n, 3, H, W] and one caption each (fixed per image, like web data)."""
    images = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    texts = []
    rng = np.random.default_rng(seed)
    for i in range(n):
        cls = CLASSES[int(rng.integers(len(CLASSES)))]
        count = scene_count(cls, rng) if captions == "web" else int(rng.integers(1, 13))
        scene = render_scene(T2I_TRAIN + seed * 1_000_000 + i, count=count, cls=cls)
        images[i] = np.asarray(scene.image)
        obj = scene.objects[0]
        write = web_caption if captions == "web" else noisy_caption
        texts.append(write(obj.cls, obj.colour, scene.count, rng))
        if progress and (i % 500 == 0 or i == n - 1):
            progress(i + 1, n)
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), texts


def _to_unit(x: torch.Tensor) -> torch.Tensor:
    return x.float() / 127.5 - 1.0


def train_vae(vae, images: torch.Tensor, steps: int, batch: int, generator: torch.Generator,
              progress: Progress | None = None) -> None:
    """Reconstruction (L1 + MSE) plus a tiny KL term, on full-size images (crops reconstruct whole scenes badly)."""
    vae.train()
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=steps, pct_start=0.05)
    for step in range(steps):
        idx = torch.randint(0, len(images), (batch,), generator=generator)
        x = _to_unit(images[idx])
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=generator)).sample
        loss = F.l1_loss(recon, x) + F.mse_loss(recon, x) + 1e-6 * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if progress:
            progress(step + 1, steps)
    vae.eval()


@torch.no_grad()
def encode_latents(vae, images: torch.Tensor, batch: int = 256, progress: Progress | None = None) -> torch.Tensor:
    """Posterior means of all images, then the autoencoder's ``scaling_factor`` from their std."""
    out = []
    for i in range(0, len(images), batch):
        out.append(vae.encode(_to_unit(images[i:i + batch])).latent_dist.mean)
        if progress:
            progress(min(i + batch, len(images)), len(images))
    latents = torch.cat(out)
    vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
    return latents * vae.config.scaling_factor


def train_unet(unet, text_encoder, tokenizer, scheduler, latents: torch.Tensor, captions: list[str],
               cfg: T2ITrainConfig, generator: torch.Generator, progress: Progress | None = None) -> None:
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
    alphas_cumprod = scheduler.alphas_cumprod
    snr = alphas_cumprod / (1 - alphas_cumprod).clamp(min=1e-8)
    for step in range(cfg.unet_steps):
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
        if progress:
            progress(step + 1, cfg.unet_steps)
    ema.copy_to(unet.parameters())
    ema_text.copy_to(text_encoder.parameters())
    unet.eval()
    text_encoder.eval()


def train_t2i(out: Path, work_dir: Path, cfg: T2ITrainConfig,
              stage: Callable[[str, int], Progress] | None = None) -> dict:
    """Train every component and save the pipeline folder at ``out``; returns a summary of the run.

    ``stage(name, total)`` returns a progress callback for that stage (the CLI draws one bar per stage).
    """
    from diffusers import StableDiffusionPipeline

    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    started = time.perf_counter()
    words = web_vocabulary() if cfg.captions == "web" else WORDS
    tokenizer, text_encoder, vae, unet, scheduler = build_components(work_dir / "tokenizer", words)

    def bar(name: str, total: int) -> Progress | None:
        return stage(name, total) if stage else None

    images, captions = render_training_set(cfg.scenes, cfg.seed, bar("render scenes", cfg.scenes), cfg.captions)
    if cfg.vae_from:
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(cfg.vae_from, subfolder="vae", torch_dtype=torch.float32).eval()
    else:
        train_vae(vae, images, cfg.vae_steps, cfg.vae_batch, generator, bar("train autoencoder", cfg.vae_steps))
    latents = encode_latents(vae, images, progress=bar("encode latents", len(images)))
    del images
    train_unet(unet, text_encoder, tokenizer, scheduler, latents, captions, cfg, generator,
               bar("train unet + text encoder", cfg.unet_steps))

    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   image_encoder=None, requires_safety_checker=False)
    # UNet and autoencoder are stored in fp16 (diffusers loads them as fp32 by default) to keep the shipped
    # weights small; the text encoder stays fp32 because transformers keeps a stored fp16 dtype on load.
    unet.half()
    vae.half()
    pipe.save_pretrained(str(out))
    config = {**asdict(cfg), "vae_from": Path(cfg.vae_from).name if cfg.vae_from else None}  # no machine paths
    summary = {"seconds": round(time.perf_counter() - started, 1), "config": config}
    reference = {"image_size": IMAGE_SIZE, "classes": list(CLASSES), "sampler": SAMPLER, "training": summary}
    (Path(out) / REFERENCE_CONFIG).write_text(json.dumps(reference, indent=2) + "\n")
    return summary
