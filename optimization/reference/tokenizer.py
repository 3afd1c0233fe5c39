"""The reference CLIP tokenizer: CLIP's byte-level BPE with a vocabulary learned from the caption words.

Every caption word must be exactly one token (the count token and the tests rely on it). Hand-written
merge chains interact across words (a merge of one word can pre-empt another word's chain), so the merges
are learned by ordinary BPE training on the word list: BPE encoding replays the training merges in rank
order, which by construction ends every training word as one symbol. CLIP's pre-tokenizer splits numbers
into digits ("12" -> "1", "2"), so the numbers 10..20 are added tokens matched as whole words
(``NUMBER_TOKENS``): every number a request may hold, 1..20, is then one token, as digits and as a word.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from .captions import vocabulary

EOW = "</w>"
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MODEL_MAX_LENGTH = 32

WORDS: tuple[str, ...] = vocabulary()  # caption words and the words of ordinary requests
NUMBER_TOKENS: tuple[str, ...] = tuple(str(n) for n in range(10, 21))  # 1..9 are single characters already


def bytes_to_unicode() -> dict[int, str]:
    """CLIP's (and GPT-2's) reversible map from bytes to printable unicode characters."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def learn_merges(words: tuple[str, ...]) -> list[tuple[str, str]]:
    """Plain BPE training until every word is a single symbol (ties broken by pair, so it is deterministic)."""
    segmented = {w: tuple(w[:-1]) + (w[-1] + EOW,) for w in words}
    merges: list[tuple[str, str]] = []
    while any(len(s) > 1 for s in segmented.values()):
        pairs = Counter(p for s in segmented.values() for p in zip(s, s[1:]))
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        for w, s in segmented.items():
            out, i = [], 0
            while i < len(s):
                if i + 1 < len(s) and (s[i], s[i + 1]) == best:
                    out.append(s[i] + s[i + 1])
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            segmented[w] = tuple(out)
    return merges


def build_tokenizer_files(folder: Path, words: tuple[str, ...] = WORDS) -> Path:
    """Write vocab.json, merges.txt and the tokenizer config that ``CLIPTokenizer.from_pretrained`` reads."""
    folder.mkdir(parents=True, exist_ok=True)
    base = list(bytes_to_unicode().values())
    merges = learn_merges(words)
    symbols = base + [c + EOW for c in base] + ["".join(m) for m in merges] + [BOS, EOS]
    vocab = {s: i for i, s in enumerate(dict.fromkeys(symbols))}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": MODEL_MAX_LENGTH,
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": EOS,
        "pad_token": EOS,
        "do_lower_case": True,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (folder / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}, indent=2))
    from tokenizers import AddedToken

    tokenizer = load_tokenizer(folder)
    tokenizer.add_tokens([AddedToken(n, single_word=True, normalized=True) for n in NUMBER_TOKENS])
    tokenizer.save_pretrained(str(folder))
    return folder


def load_tokenizer(folder: Path):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(folder))
