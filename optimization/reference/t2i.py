"""The reference text-to-image models: tiny ``StableDiffusionPipeline``s trained on captioned scenes over the
shared autoencoder (``autoencoder``), resumable (``TrainingCheckpoint``).

``train_t2i`` (``tally reference train-t2i``) trains the tokenizer, a CLIP text encoder and a
UNet2DConditionModel with cross-attention at every resolution (the text must matter), jointly, with
v-prediction on a zero-terminal-SNR schedule (so a few sampling steps start from true noise). ``reference``
learns from faithful captions (``captions.faithful_caption``), ``reference-web`` from web-like captions on
scenes with habitual counts (``captions.web_caption``).

It saves an ordinary diffusers folder. The shipped samplers are short (``SAMPLERS``: 4 steps): count optimization
backpropagates through every step.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

from .autoencoder import CROWD_FROM, LATENT_CHANNELS, Progress, Stage, bar, encode_latents, render_training_set
from .checkpoint import TrainingCheckpoint
# not from .models: training needs no service configuration (pydantic)
from . import AUTOENCODER_PATH, PIPELINE_PATH, REFERENCE_CONFIG
from .scenes import CLASSES, IMAGE_SIZE
from .tokenizer import WORDS, build_tokenizer_files, load_tokenizer

# 4 steps: as exact as 6 or 8, half the cost. Guidance about 1.5 for `reference`: stronger guidance draws fewer objects
# than asked at small counts (a lone shape is often not drawn at all at 4) and merges crowds. `reference-web` keeps
# 4: at 1.5 it draws irregular blobs that the detector verified falsely 14% of the time, against 4.4% at 4; rescaled
# (0.7, the value Lin et al. give for zero-terminal-SNR models) its crowds lose the stained backgrounds strong
# guidance gave them (docs/measured.md, "Sampler"). Each step has its own scale (``guidance_schedule``, measured per
# model): guidance 4 on reference-web's last, low-noise steps deformed its circles into rounded squares, so they get
# 1.5; reference verifies more at 6-10 guided a little less on its first steps and a little more on its last.
SAMPLERS = {"faithful": {"num_inference_steps": 4, "guidance_scale": 1.2, "guidance_schedule": [1.2, 1.5, 2.0, 2.0]},
            "web": {"num_inference_steps": 4, "guidance_scale": 4.0, "guidance_rescale": 0.7,
                    "guidance_schedule": [4.0, 4.0, 1.5, 1.5]}}



@dataclass
class T2ITrainConfig:
    scenes: int = 40_000
    unet_steps: int = 2400
    unet_batch: int = 48
    unet_lr: float = 4e-4
    text_lr: float = 2e-4
    caption_dropout: float = 0.1  # empty captions teach the unconditional branch for guidance
    # Least loss weight of a timestep: min-SNR-5 weights high noise, where the layout (and so the count) forms, at
    # almost nothing; the floor keeps it learning there.
    weight_floor: float = 0.05
    ema_decay: float = 0.999
    seed: int = 0
    captions: Literal["faithful", "web"] = "faithful"
    # Least space between shapes in the training scenes, in pixels: 6 leaves a latent cell (4 px) of background
    # between neighbours nearly always, so the UNet learns to keep them apart; at 3 it drew merged pairs.
    gap: int = 6
    # How much likelier a faithful training scene of ``crowd_from``-12 objects is than one of fewer
    # (``faithful_count``); 1 is uniform, as every part of the shipped `reference` was trained but its last three (2:
    # from 6 twice, then from 9).
    crowd_weight: float = 1.0
    crowd_from: int = CROWD_FROM
    checkpoint_every: int = 50  # steps
    vae_from: str = ""  # the AutoencoderKL folder both generators share (frozen); set by the CLI
    unet_from: str = ""  # a pipeline folder whose UNet is the starting point (its drawing skill, not its text)
    text_encoder_from: str = ""  # ... and whose text encoder is (to train a shipped model further)
    # A fresh UNet's widths; the shipped one's. Twice as wide learned twice as much in equal steps on a GPU, 25% slower
    # to sample on two CPU cores (docs/measured.md, "Base pipelines").
    unet_channels: tuple[int, int, int] = (32, 64, 128)
    # Transformer layers per UNet block; 0 keeps the loaded UNet's. More than it has adds layers that start as the
    # identity (``deepen``), so a trained UNet gains capacity without forgetting what it draws.
    transformer_layers: int = 0


VARIANTS: dict[str, T2ITrainConfig] = {
    "reference": T2ITrainConfig(),
    # The web model starts from the reference UNet (it can already draw shapes and crowds) with a fresh text
    # encoder, so what it learns of numbers comes from web captions only; fewer scenes and steps do.
    "web": T2ITrainConfig(captions="web", scenes=20_000, unet_steps=1000),
}


def build_components(tokenizer_dir: Path, words: tuple[str, ...] = WORDS,
                     unet_channels: tuple[int, int, int] = T2ITrainConfig.unet_channels):
    """Fresh tokenizer, text encoder, UNet and scheduler; the default sizes make ~0.1 s per image on two CPU cores."""
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
        block_out_channels=tuple(unet_channels), norm_num_groups=16, cross_attention_dim=128, attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    )
    scheduler = DDIMScheduler(
        num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
        prediction_type="v_prediction", rescale_betas_zero_snr=True, timestep_spacing="trailing",
        clip_sample=False, set_alpha_to_one=False, steps_offset=1,
    )
    return tokenizer, text_encoder, unet, scheduler


def deepen(unet, layers: int):
    """``unet`` with ``layers`` transformer layers in every attention block: its own weights where it has them, the
    added layers zero at their outputs (attention and feed-forward), so that they are the identity and the UNet
    predicts exactly what it did until training moves them."""
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention import BasicTransformerBlock

    deeper = UNet2DConditionModel.from_config({**unet.config, "transformer_layers_per_block": layers})
    missing, unexpected = deeper.load_state_dict(unet.state_dict(), strict=False)
    if unexpected:
        raise ValueError(f"the UNet has more than {layers} transformer layers in a block: {unexpected[0]}")
    added = [name for name, module in deeper.named_modules()
             if isinstance(module, BasicTransformerBlock) and f"{name}.norm1.weight" in missing]
    for name in added:
        block = deeper.get_submodule(name)
        for projection in (block.attn1.to_out[0], block.attn2.to_out[0], block.ff.net[2]):
            torch.nn.init.zeros_(projection.weight)
            torch.nn.init.zeros_(projection.bias)
    return deeper


def _v_loss(unet, text_encoder, tokenizer, scheduler, snr: torch.Tensor, latents: torch.Tensor, captions: list[str],
            cfg: T2ITrainConfig, generator: torch.Generator) -> torch.Tensor:
    """One batch's loss: v-prediction at random timesteps, captions dropped at ``caption_dropout``, min-SNR
    weighted. Random draws come from ``generator`` on the CPU whatever the device, so a run on a GPU takes the
    same batches, noise and timesteps as one on the CPU."""
    device = latents.device
    idx = torch.randint(0, len(latents), (cfg.unet_batch,), generator=generator)
    drop = torch.rand(cfg.unet_batch, generator=generator) < cfg.caption_dropout
    texts = ["" if d else captions[i] for i, d in zip(idx.tolist(), drop.tolist())]
    ids = tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids.to(device)
    x0 = latents[idx.to(device)]
    noise = torch.randn(x0.shape, generator=generator).to(device)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (cfg.unet_batch,), generator=generator).to(device)
    xt = scheduler.add_noise(x0, noise, t)
    target = scheduler.get_velocity(x0, noise, t)
    pred = unet(xt, t, encoder_hidden_states=text_encoder(ids)[0]).sample
    # min-SNR-5 weighting for v-prediction: w = min(snr, 5) / (snr + 1); terminal SNR 0 gets weight 0 -> floor.
    w = (snr[t].clamp(max=5.0) / (snr[t] + 1)).clamp(min=cfg.weight_floor)
    return (w * F.mse_loss(pred, target, reduction="none").mean(dim=(1, 2, 3))).mean()


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
        ema.to(latents.device)  # the saved shadow weights were loaded onto the CPU
        ema_text.to(latents.device)
        generator.set_state(state["generator"])
        start = state["step"]
    alphas_cumprod = scheduler.alphas_cumprod
    snr = (alphas_cumprod / (1 - alphas_cumprod).clamp(min=1e-8)).to(latents.device)
    for step in range(start, cfg.unet_steps):
        loss = _v_loss(unet, text_encoder, tokenizer, scheduler, snr, latents, captions, cfg, generator)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(unet.parameters()) + list(text_encoder.parameters()), 1.0)
        opt.step()
        sched.step()
        ema.step(unet.parameters())
        ema_text.step(text_encoder.parameters())
        if checkpoint:
            checkpoint.record(loss)
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


def train_t2i(out: Path, work_dir: Path, cfg: T2ITrainConfig, stage: Stage | None = None,
              resume: bool = False, device: str = "cpu",
              self_samples: tuple[torch.Tensor, list[str], dict] | None = None) -> dict:
    """Train tokenizer, text encoder and UNet over the shared autoencoder and save the pipeline folder at ``out``.

    ``stage(name, total)`` returns a progress callback for that stage (the CLI draws one bar per stage).
    ``device``: where the models train ("cuda" on a GPU); the random stream is the CPU's either way.
    ``self_samples``: images, captions and statistics of ``self_samples.selected_samples``, trained on beside the
    rendered scenes.
    """
    from diffusers import AutoencoderKL, StableDiffusionPipeline

    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    started = time.perf_counter()
    work_dir = Path(work_dir)
    checkpoint = TrainingCheckpoint(work_dir / "unet.ckpt", cfg.checkpoint_every)
    state = checkpoint.load(cfg.unet_steps) if resume else None
    tokenizer, text_encoder, unet, scheduler = build_components(work_dir / "tokenizer", unet_channels=cfg.unet_channels)
    if cfg.unet_from:
        from diffusers import UNet2DConditionModel

        unet = UNet2DConditionModel.from_pretrained(cfg.unet_from, subfolder="unet", torch_dtype=torch.float32)
    if cfg.transformer_layers:
        unet = deepen(unet, cfg.transformer_layers)
    if cfg.text_encoder_from:  # the same tokenizer (one vocabulary for both models), so the same rows
        from transformers import CLIPTextModel

        text_encoder = CLIPTextModel.from_pretrained(cfg.text_encoder_from, subfolder="text_encoder",
                                                     dtype=torch.float32)
    vae = AutoencoderKL.from_pretrained(cfg.vae_from, torch_dtype=torch.float32).eval()
    images, captions = render_training_set(cfg.scenes, cfg.seed, bar(stage, "render scenes", cfg.scenes),
                                           cfg.captions, gap=cfg.gap, crowd_weight=cfg.crowd_weight,
                                           crowd_from=cfg.crowd_from)
    if self_samples:
        images, captions = torch.cat([images, self_samples[0]]), captions + self_samples[1]
    for module in (vae, unet, text_encoder):
        module.to(device)
    latents = encode_latents(vae, images, progress=bar(stage, "encode latents", len(images)))
    del images
    train_unet(unet, text_encoder, tokenizer, scheduler, latents, captions, cfg, generator,
               bar(stage, "train unet + text encoder", cfg.unet_steps), checkpoint, state)
    for module in (vae, unet, text_encoder):
        module.to("cpu")

    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   image_encoder=None, requires_safety_checker=False)
    # Stored in fp16 to keep the shipped weights small, loaded as fp32: diffusers loads the UNet and the
    # autoencoder as fp32 by default, and transformers loads the text encoder in the dtype its config names.
    for module in (unet, vae, text_encoder):
        module.half()
    pipe.save_pretrained(str(out))
    if Path(cfg.vae_from).resolve() == AUTOENCODER_PATH.resolve() and Path(out).resolve() != PIPELINE_PATH.resolve():
        shutil.rmtree(Path(out) / "vae")  # the shared one ships once, in `reference` (``shipped_fields`` loads it)
    text_config = Path(out) / "text_encoder" / "config.json"
    text_config.write_text(json.dumps({**json.loads(text_config.read_text()), "dtype": "float32"}, indent=2) + "\n")
    config = {**asdict(cfg), "vae_from": Path(cfg.vae_from).name,  # no machine paths
              "unet_from": Path(cfg.unet_from).name if cfg.unet_from else "",
              "text_encoder_from": Path(cfg.text_encoder_from).name if cfg.text_encoder_from else ""}
    summary = {"seconds": round(time.perf_counter() - started, 1), "resumed_at": state["step"] if state else 0,
               "config": config, **({"self_samples": self_samples[2]} if self_samples else {})}
    reference = {"image_size": IMAGE_SIZE, "classes": list(CLASSES), "sampler": SAMPLERS[cfg.captions],
                 "training": summary}
    (Path(out) / REFERENCE_CONFIG).write_text(json.dumps(reference, indent=2) + "\n")
    return summary
