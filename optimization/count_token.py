"""``CountToken``: a learned embedding per (model fingerprint, object, count), stored as a diffusers
textual-inversion file.

File format (safetensors): SD family, one tensor ``[1, dim]`` under the placeholder's name; SDXL family,
``clip_l`` and ``clip_g``. The header carries the metadata (fingerprint, object, count, iterations,
validation counts, config). Any diffusers user can ``pipe.load_textual_inversion(path)`` a Tally SD file,
or load ``clip_l``/``clip_g`` into the two encoders of an SDXL pipeline. Key and header checks live in
``token_file`` (torch-free, shared with the API and the token store).

Placement: the token takes the place of the word right before the count ("a photo of 7 blue triangles"
-> "a photo <tally-count> 7 blue triangles") and starts as that word's embedding, so an untrained token
renders exactly the base prompt and before/after comparisons are clean. If the count opens the prompt,
the token is inserted before it, starting from the embedding of "a".

Stated-number calibration: a token may carry ``stated`` (header ``stated_count``), the number its prompts
write in place of the count because this model draws the count most often when told that number, or the
model's crowd word ("many") where that draws it more often than any number; the engine then writes it, and
still verifies against the count.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save

from .errors import InvalidRequest
from .pipelines import PLACEHOLDER
from .token_file import FORMAT_VERSION, TokenKey, header_key, header_stated, metadata, read_header, write_atomic

__all__ = ["CountToken", "TokenKey", "place_token"]


@dataclass
class CountToken:
    key: TokenKey
    vectors: dict[str, torch.Tensor]  # encoder name ("clip_l", "clip_g") -> [dim]
    init_word: str = "of"
    metadata: dict = field(default_factory=dict)  # iterations, validation, config ...
    stated: int | str | None = None  # what its prompts state, when calibration chose other than the count

    @property
    def stated_count(self) -> int | str:
        return self.stated or self.key.count

    def to_bytes(self) -> bytes:
        if set(self.vectors) == {"clip_l"}:
            tensors = {PLACEHOLDER: self.vectors["clip_l"].reshape(1, -1).float().contiguous()}
        else:
            tensors = {k: v.reshape(1, -1).float().contiguous() for k, v in self.vectors.items()}
        header = {"tally_format": FORMAT_VERSION, "model_fingerprint": self.key.model, "object": self.key.object,
                  "count": str(self.key.count), "init_word": self.init_word, "metadata": json.dumps(self.metadata)}
        if self.stated is not None:
            header["stated_count"] = str(self.stated)
        return save(tensors, metadata=header)

    def save(self, path: Path) -> Path:
        return write_atomic(path, self.to_bytes())

    @classmethod
    def load(cls, path: Path, expected_model: str | None = None) -> "CountToken":
        path = Path(path)
        if not path.is_file():
            raise InvalidRequest(f"token file not found: {path}")
        return cls.from_bytes(path.read_bytes(), expected_model, path.name)

    @classmethod
    def from_bytes(cls, data: bytes, expected_model: str | None = None, name: str = "token file") -> "CountToken":
        try:
            header = read_header(data).get("__metadata__") or {}
            tensors = load(data)
        except (SafetensorError, InvalidRequest) as exc:
            raise InvalidRequest(f"corrupt {name}: {exc}") from None
        key = header_key(header, name)
        if expected_model is not None and key.model != expected_model:
            raise InvalidRequest(f"{name} was learned for model {key.model}, not for this model ({expected_model})")
        if PLACEHOLDER in tensors:
            vectors = {"clip_l": tensors[PLACEHOLDER].reshape(-1)}
        elif {"clip_l", "clip_g"} <= set(tensors):
            vectors = {k: tensors[k].reshape(-1) for k in ("clip_l", "clip_g")}
        else:
            raise InvalidRequest(f"{name} holds {sorted(tensors)}, expected {PLACEHOLDER!r} or clip_l + clip_g")
        return cls(key, vectors, header.get("init_word", "of"), metadata(header), header_stated(header))


def place_token(prompt: str, count: int | str) -> tuple[str, str]:
    """The prompt with the placeholder before its count, and the word the token starts from (see module doc)."""
    words = prompt.split()
    for i, word in enumerate(words):
        if word == str(count):
            if i == 0:
                return " ".join([PLACEHOLDER] + words), "a"
            return " ".join(words[:i - 1] + [PLACEHOLDER] + words[i:]), words[i - 1]
    raise InvalidRequest(f"the prompt {prompt!r} does not state the count {count}")
