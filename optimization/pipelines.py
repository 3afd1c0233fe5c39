"""Adapters over diffusers text-to-image pipelines: the SD family (one text encoder) and the SDXL family
(two encoders, pooled embeddings, time ids; SDXL-Turbo is the production target).

Every model, the shipped reference pipeline included, loads through ``DiffusionPipeline.from_pretrained``.
Each text encoder gets one reserved placeholder token (``PLACEHOLDER``) whose embedding row holds the
count token of the job at hand: the vocabulary never grows with the token cache. Two ways to generate:

- ``generate``: batched, no gradients; the placeholder row holds whatever ``set_token`` wrote.
- ``generate_differentiable``: the placeholder's embedding is replaced, through a forward hook on each
  encoder's embedding layer, by leaf tensors the optimizer owns, so the gradient of the images reaches
  those tensors and nothing else (all model weights are frozen).
"""

from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager
from pathlib import Path

import torch

from .config import GENERATION_BATCH, ModelSpec
from .errors import InvalidRequest
from .guidance import guidance_per_step
from .token_file import PLACEHOLDER

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}



TOKEN_NORM_FACTOR = 100.0


class TextToImage:
    """A resident diffusers pipeline, its sampler settings and the count-token slot of each text encoder."""

    def __init__(self, pipe, num_inference_steps: int, guidance_scale: float, source: str = "",
                 guidance_rescale: float = 0.0, guidance_schedule: list[float] | None = None):
        self.pipe = pipe
        self.num_inference_steps = num_inference_steps
        self.guidance_scale = guidance_scale
        self.guidance_rescale = guidance_rescale
        self.guidance_schedule = list(guidance_schedule or [])  # per step; ModelSpec checks it
        self.source = source
        self.pipe.set_progress_bar_config(disable=True)
        for module in self._modules():
            module.requires_grad_(False)
            module.eval()
        self.family = "sdxl" if getattr(pipe, "text_encoder_2", None) is not None else "sd"
        self.fingerprint = model_fingerprint(self.encoders())
        self._negative = None
        self._live: dict[str, torch.Tensor] | None = None
        self.placeholder_ids = {name: self._install_placeholder(name, tok, enc) for name, tok, enc in self.encoders()}
        # How long a token vector may be: TOKEN_NORM_FACTOR times the longest word embedding of its encoder.
        # Optimization moves a token well away from the words (Adam moves each element up to ~lr per
        # iteration), never orders of magnitude beyond them: such a vector is a broken or hostile file.
        self.token_norm_bounds = {name: TOKEN_NORM_FACTOR * float(enc.get_input_embeddings().weight.norm(dim=1).max())
                                  for name, _, enc in self.encoders()}

    # ------------------------------------------------------------------------------------------- loading
    @classmethod
    def from_spec(cls, spec: ModelSpec, gradient_checkpointing: bool = False) -> "TextToImage":
        """The pipeline and sampler a model entry names."""
        return cls.load(spec.pipeline, spec.num_inference_steps, spec.guidance_scale, device=spec.device,
                        dtype=spec.dtype, gradient_checkpointing=gradient_checkpointing,
                        guidance_rescale=spec.guidance_rescale, guidance_schedule=spec.guidance_schedule,
                        vae=spec.vae)

    @classmethod
    def load(cls, model: str | Path, num_inference_steps: int, guidance_scale: float, device: str = "cpu",
             dtype: str = "fp32", gradient_checkpointing: bool = False, guidance_rescale: float = 0.0,
             guidance_schedule: list[float] | None = None, vae: str | Path | None = None) -> "TextToImage":
        if dtype not in DTYPES:
            raise InvalidRequest(f"unknown dtype {dtype!r}; allowed: {', '.join(DTYPES)}")
        if str(model).startswith((".", "/", "~")) and not Path(model).expanduser().is_dir():
            raise InvalidRequest(f"pipeline folder not found: {model}")
        pipe = load_pipeline(model, DTYPES[dtype], vae).to(device)
        if gradient_checkpointing and hasattr(pipe.unet, "enable_gradient_checkpointing"):
            pipe.unet.enable_gradient_checkpointing()
        return cls(pipe, num_inference_steps, guidance_scale, source=str(model), guidance_rescale=guidance_rescale,
                   guidance_schedule=guidance_schedule)

    def _modules(self):
        names = ("unet", "vae", "text_encoder", "text_encoder_2")
        return [getattr(self.pipe, n) for n in names if getattr(self.pipe, n, None) is not None]

    @property
    def device(self) -> torch.device:
        return self.pipe.device

    @property
    def image_size(self) -> int:
        return self.pipe.unet.config.sample_size * self.pipe.vae_scale_factor

    # ---------------------------------------------------------------------------------------- token slot
    def encoders(self) -> list[tuple[str, object, torch.nn.Module]]:
        """(name in token files, tokenizer, text encoder): ``clip_l`` and, for SDXL, ``clip_g``."""
        out = [("clip_l", self.pipe.tokenizer, self.pipe.text_encoder)]
        if getattr(self.pipe, "text_encoder_2", None) is not None:
            out.append(("clip_g", self.pipe.tokenizer_2, self.pipe.text_encoder_2))
        return out

    def _install_placeholder(self, name: str, tokenizer, encoder) -> int:
        if PLACEHOLDER not in tokenizer.get_vocab():
            tokenizer.add_tokens([PLACEHOLDER])
            encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        token_id = tokenizer.convert_tokens_to_ids(PLACEHOLDER)
        embedding = encoder.get_input_embeddings()

        def replace_placeholder(module, inputs, output):
            if self._live is None:
                return output
            mask = (inputs[0] == token_id).unsqueeze(-1)
            return torch.where(mask, self._live[name].to(output.dtype).expand_as(output), output)

        embedding.register_forward_hook(replace_placeholder)
        return token_id

    def word_vectors(self, word: str) -> dict[str, torch.Tensor]:
        """Each encoder's embedding of a one-token word: the starting point of a new count token."""
        out = {}
        for name, tokenizer, encoder in self.encoders():
            ids = tokenizer(word, add_special_tokens=False).input_ids
            if len(ids) != 1:
                raise InvalidRequest(f"{word!r} is {len(ids)} tokens for {name}; a count token starts from one word")
            out[name] = encoder.get_input_embeddings().weight[ids[0]].detach().float().cpu().clone()
        return out

    @torch.no_grad()
    def set_token(self, vectors: dict[str, torch.Tensor]) -> None:
        """Write a count token into each encoder's placeholder row (workers run one job at a time)."""
        for name, _, encoder in self.encoders():
            if name not in vectors:
                raise InvalidRequest(f"the token has no vector for {name}; this model needs {', '.join(self.placeholder_ids)}")
            weight = encoder.get_input_embeddings().weight
            vector = vectors[name]
            if vector.numel() != weight.shape[1]:
                raise InvalidRequest(f"{name} vector has size {vector.numel()}, this encoder needs {weight.shape[1]}")
            weight[self.placeholder_ids[name]] = vector.reshape(-1).to(weight.device, weight.dtype)

    @contextmanager
    def live_token(self, vectors: dict[str, torch.Tensor]):
        """Within the block, the placeholder embeds as ``vectors`` (tensors that may require grad)."""
        self._live = {k: v.to(self.device) for k, v in vectors.items()}
        try:
            yield
        finally:
            self._live = None

    # ---------------------------------------------------------------------------------------- generation
    def encode(self, prompt: str) -> dict[str, torch.Tensor]:
        """Prompt conditioning for one prompt; differentiable in the live token when grad is enabled."""
        if self.family == "sdxl":
            pe, _, pooled, _ = self.pipe.encode_prompt(prompt, device=self.device, num_images_per_prompt=1,
                                                       do_classifier_free_guidance=False)
            return {"prompt_embeds": pe, "pooled_prompt_embeds": pooled}
        pe, _ = self.pipe.encode_prompt(prompt, self.device, 1, False)
        return {"prompt_embeds": pe}

    def _negative_conditioning(self) -> dict[str, torch.Tensor]:
        """The empty prompt's conditioning, encoded once (it contains no count token)."""
        if self._negative is None:
            with torch.no_grad():
                cond = self.encode("")
            self._negative = {f"negative_{k}": v for k, v in cond.items()}
        return self._negative

    def initial_latents(self, seeds: list[int]) -> torch.Tensor:
        """The initial noise the pipeline draws for ``seeds`` (one CPU generator per seed, as diffusers draws
        them), ``[B, C, h, w]``: passing it back as ``latents`` gives the same images as the seeds do."""
        unet = self.pipe.unet
        shape = (1, unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
        return torch.cat([torch.randn(shape, generator=torch.Generator("cpu").manual_seed(int(s))) for s in seeds])

    def _call(self, cond: dict[str, torch.Tensor], seeds: list[int], latents: torch.Tensor | None = None) -> torch.Tensor:
        batch = {k: v.expand(len(seeds), *v.shape[1:]) for k, v in cond.items()}
        if self.guidance_scale > 1.0:
            batch.update({k: v.expand(len(seeds), *v.shape[1:]) for k, v in self._negative_conditioning().items()})
            if self.guidance_rescale:  # passed only when set: not every pipeline takes it
                batch["guidance_rescale"] = self.guidance_rescale
            if self.guidance_schedule:
                batch["callback_on_step_end"] = guidance_per_step(self.guidance_schedule)
        generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
        if latents is not None:  # the pipeline scales them by the scheduler's init_noise_sigma, as drawn noise
            batch["latents"] = latents.to(self.device, self.pipe.unet.dtype)
        # The undecorated __call__: diffusers wraps it in no_grad, which would cut the gradient.
        call = type(self.pipe).__call__.__wrapped__
        out = call(self.pipe, **batch, generator=generators, output_type="pt",
                   num_inference_steps=self.num_inference_steps, guidance_scale=self.guidance_scale)
        return out.images.float()

    @torch.no_grad()
    def generate(self, prompt: str, seeds: list[int], batch_size: int = GENERATION_BATCH) -> torch.Tensor:
        """Images ``[len(seeds), 3, H, W]`` in [0, 1] on the CPU; each depends only on prompt, token and seed."""
        cond = self.encode(prompt)
        return torch.cat([self._call(cond, seeds[i:i + batch_size]).cpu() for i in range(0, len(seeds), batch_size)])

    @torch.no_grad()
    def generate_each(self, prompts: list[str], seeds: list[int]) -> torch.Tensor:
        """Image i of ``prompts[i]`` and ``seeds[i]``, all in one batch (requests with different prompts
        sharing the denoiser); each prompt is encoded once."""
        encoded = {p: self.encode(p) for p in dict.fromkeys(prompts)}
        cond = {k: torch.cat([encoded[p][k] for p in prompts]) for k in encoded[prompts[0]]}
        return self._call(cond, seeds).cpu()

    def generate_differentiable(self, prompt: str, seeds: list[int], vectors: dict[str, torch.Tensor] | None = None,
                                latents: torch.Tensor | None = None) -> torch.Tensor:
        """Images on the model's device whose gradient reaches ``vectors`` (the placeholder's embedding) and/or
        ``latents`` (the initial noise, ``initial_latents`` of the seeds when not given); model weights stay
        frozen. Without ``vectors`` the placeholder holds whatever ``set_token`` wrote."""
        with torch.enable_grad():
            if vectors is None:
                return self._call(self.encode(prompt), seeds, latents)
            with self.live_token(vectors):
                return self._call(self.encode(prompt), seeds, latents)


def load_pipeline(model: str | Path, dtype: torch.dtype, vae: str | Path | None = None):
    """``DiffusionPipeline.from_pretrained``, with ``vae`` (an AutoencoderKL) in place of the pipeline's own."""
    from diffusers import AutoencoderKL, DiffusionPipeline

    components = {"vae": AutoencoderKL.from_pretrained(str(vae), torch_dtype=dtype)} if vae else {}
    return DiffusionPipeline.from_pretrained(str(model), dtype=dtype, **components)


def model_fingerprint(encoders) -> str:
    """Hash of every tokenizer vocabulary and text-encoder weight (as fp32): a token never crosses encoders.

    Computed before the placeholder is added, so it names the model as published.
    """
    digest = hashlib.sha256()
    for name, tokenizer, encoder in encoders:
        digest.update(name.encode())
        digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
        for key, tensor in sorted(encoder.state_dict().items()):
            digest.update(key.encode())
            digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]
