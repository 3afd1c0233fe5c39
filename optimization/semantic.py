"""``ClipGuard``: the paper's semantic guard, a CLIP image-text similarity penalty beside the detector guard.

On a real model the counting loss alone can be won with degenerate images (textures of blobs that a COCO
detector counts); the penalty ``weight * (1 - cos(CLIP(image), CLIP(prompt)))`` keeps each optimized image
about what the prompt says. It is differentiable in the images, so its gradient reaches the count token
through the generation. Configured per model (``ModelSpec.semantic_guard``: a transformers ``CLIPModel``
by hub id or local folder), off by default; the reference world's detector guard needs no help.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .errors import InvalidRequest
from .token_file import PLACEHOLDER

# OpenAI CLIP's preprocessing, used when the model folder has no preprocessor_config.json
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ClipGuard:
    """CLIP kept resident; ``penalty(images, prompt)`` per image, differentiable in ``images``."""

    def __init__(self, model: str, weight: float, device: str | torch.device = "cpu"):
        from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

        try:
            self.model = CLIPModel.from_pretrained(model).eval().to(device)
            self.tokenizer = CLIPTokenizer.from_pretrained(model)
        except OSError as exc:
            raise InvalidRequest(f"semantic guard: cannot load CLIP model {model!r}: {exc}") from None
        for p in self.model.parameters():
            p.requires_grad_(False)
        try:
            processor = CLIPImageProcessor.from_pretrained(model)
            mean, std = processor.image_mean, processor.image_std
        except OSError:
            mean, std = CLIP_MEAN, CLIP_STD
        self.device = torch.device(device)
        self.mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, 3, 1, 1)
        self.size = self.model.config.vision_config.image_size
        self.weight = weight
        self._texts: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def text_features(self, prompt: str) -> torch.Tensor:
        """The unit CLIP embedding of the prompt as a person reads it (the placeholder dropped), cached."""
        text = " ".join(prompt.replace(PLACEHOLDER, " ").split())
        if text not in self._texts:
            ids = self.tokenizer([text], padding=True, truncation=True, return_tensors="pt").to(self.device)
            self._texts[text] = F.normalize(_features(self.model.get_text_features(**ids)), dim=-1)[0]
        return self._texts[text]

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """Unit CLIP embeddings of ``[B, 3, H, W]`` images in [0, 1], differentiable."""
        x = F.interpolate(images.to(self.device).float(), size=(self.size, self.size), mode="bilinear",
                          align_corners=False)
        features = self.model.get_image_features(pixel_values=(x - self.mean) / self.std)
        return F.normalize(_features(features), dim=-1)

    def penalty(self, images: torch.Tensor, prompt: str) -> torch.Tensor:
        """``weight * (1 - cosine similarity)`` of each image to the prompt, ``[B]``."""
        return self.weight * (1 - self.image_features(images) @ self.text_features(prompt))


def _features(output) -> torch.Tensor:
    """Projected embeddings: a tensor in transformers 4, the output's ``pooler_output`` in 5."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output
