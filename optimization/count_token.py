"""``CountToken``: a learned embedding per (model fingerprint, object, count), stored as a diffusers
textual-inversion file.

File format (safetensors): SD family, one tensor ``[1, dim]`` under the placeholder's name; SDXL family,
``clip_l`` and ``clip_g``. The header carries the metadata (fingerprint, object, count, iterations,
validation counts, config). Any diffusers user can ``pipe.load_textual_inversion(path)`` a Tally SD file,
or load ``clip_l``/``clip_g`` into the two encoders of an SDXL pipeline.

Placement: the token takes the place of the word right before the count ("a photo of 7 blue triangles"
-> "a photo <tally-count> 7 blue triangles") and starts as that word's embedding, so an untrained token
renders exactly the base prompt and before/after comparisons are clean. If the count opens the prompt,
the token is inserted before it, starting from the embedding of "a".
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save

from .pipelines import PLACEHOLDER
from .token_file import read_header

FORMAT_VERSION = "1"
_NUMBER = re.compile(r"^\d+$")


@dataclass(frozen=True)
class TokenKey:
    """The identity of a count token; ``model`` is the text encoders' fingerprint."""

    model: str
    object: str
    count: int

    @property
    def id(self) -> str:
        return f"{self.object}-{self.count}-{self.model}"

    @classmethod
    def parse(cls, key_id: str) -> "TokenKey":
        match = re.fullmatch(r"(?P<object>.+)-(?P<count>\d+)-(?P<model>[0-9a-f]{16})", key_id)
        if not match:
            raise ValueError(f"not a token key: {key_id!r} (expected OBJECT-COUNT-FINGERPRINT)")
        return cls(match["model"], match["object"], int(match["count"]))


@dataclass
class CountToken:
    key: TokenKey
    vectors: dict[str, torch.Tensor]  # encoder name ("clip_l", "clip_g") -> [dim]
    init_word: str = "of"
    metadata: dict = field(default_factory=dict)  # iterations, validation, config ...

    def to_bytes(self) -> bytes:
        if set(self.vectors) == {"clip_l"}:
            tensors = {PLACEHOLDER: self.vectors["clip_l"].reshape(1, -1).float().contiguous()}
        else:
            tensors = {k: v.reshape(1, -1).float().contiguous() for k, v in self.vectors.items()}
        header = {"tally_format": FORMAT_VERSION, "model_fingerprint": self.key.model, "object": self.key.object,
                  "count": str(self.key.count), "init_word": self.init_word, "metadata": json.dumps(self.metadata)}
        return save(tensors, metadata=header)

    def save(self, path: Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(self.to_bytes())
        tmp.replace(path)  # atomic: a reader never sees half a file
        return path

    @classmethod
    def load(cls, path: Path, expected_model: str | None = None) -> "CountToken":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"token file not found: {path}")
        return cls.from_bytes(path.read_bytes(), expected_model, path.name)

    @classmethod
    def from_bytes(cls, data: bytes, expected_model: str | None = None, name: str = "token file") -> "CountToken":
        try:
            header = read_header(data).get("__metadata__") or {}
            tensors = load(data)
        except (SafetensorError, ValueError) as exc:
            raise ValueError(f"corrupt {name}: {exc}") from None
        return cls.from_parts(tensors, header, expected_model, name)

    @classmethod
    def from_parts(cls, tensors: dict, header: dict, expected_model: str | None, name: str = "token") -> "CountToken":
        missing = {"model_fingerprint", "object", "count"} - set(header)
        if missing:
            raise ValueError(f"{name} is not a Tally count token (header lacks {', '.join(sorted(missing))})")
        key = TokenKey(header["model_fingerprint"], header["object"], int(header["count"]))
        if expected_model is not None and key.model != expected_model:
            raise ValueError(f"{name} was learned for model {key.model}, not for this model ({expected_model})")
        if PLACEHOLDER in tensors:
            vectors = {"clip_l": tensors[PLACEHOLDER].reshape(-1)}
        elif {"clip_l", "clip_g"} <= set(tensors):
            vectors = {k: tensors[k].reshape(-1) for k in ("clip_l", "clip_g")}
        else:
            raise ValueError(f"{name} holds {sorted(tensors)}, expected {PLACEHOLDER!r} or clip_l + clip_g")
        return cls(key, vectors, header.get("init_word", "of"), json.loads(header.get("metadata") or "{}"))


def token_path(token_dir: Path, key: TokenKey) -> Path:
    """One file per key in the durable token directory."""
    return Path(token_dir) / f"{key.id}.safetensors"


def place_token(prompt: str, count: int) -> tuple[str, str]:
    """The prompt with the placeholder before its count, and the word the token starts from (see module doc)."""
    words = prompt.split()
    for i, word in enumerate(words):
        if word == str(count):
            if i == 0:
                return " ".join([PLACEHOLDER] + words), "a"
            return " ".join(words[:i - 1] + [PLACEHOLDER] + words[i:]), words[i - 1]
    raise ValueError(f"the prompt {prompt!r} does not state the count {count}")
