"""The caption model of ``reference-web``: scenes and captions distributed the way web data is.

Two habits of real captions make real models miscount large numbers (T2ICountBench, 2025), and this
model has both, so the project can measure what a count token does where resampling fails:

- **Each kind of object has its habitual number.** Most scenes of a class hold about its typical count
  (``TYPICAL_COUNT``, spread ±1); a minority (``TAIL``) hold any count 1..12, so large counts are drawable
  but rare and never tied to a number in the caption.
- **Small numbers are stated, large ones rarely.** The chance that a caption states the count falls from
  0.95 for one object to 0.04 for eight or more (``STATED``); otherwise it says "a few", "some", "several",
  "many" (each only where it fits) or nothing at all.

Stated counts are always true (digits or number words, equally often). Sentences come in several shapes
with a few scene words, so free-form requests about the shapes read like the training data.
"""

from __future__ import annotations

import numpy as np

from .scenes import CLASSES, COLOURS, MAX_COUNT, MIN_COUNT, PLURALS

TYPICAL_COUNT: dict[str, int] = {"circle": 3, "square": 4, "triangle": 2, "cross": 5}
TAIL = 0.25  # share of scenes whose count is uniform over 1..12 instead of near the class's habit
STATED: dict[int, float] = {1: 0.95, 2: 0.85, 3: 0.7, 4: 0.45, 5: 0.25, 6: 0.12, 7: 0.07}
STATED_LARGE = 0.04  # 8 objects and more
NUMBER_NAMES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
                "sixteen seventeen eighteen nineteen twenty").split()
# Vague words and the counts they may describe.
VAGUE: dict[str, range] = {"a few": range(2, 5), "some": range(2, 13), "several": range(3, 8), "many": range(6, 13)}
SURFACES = ("table", "floor", "paper", "wall")
SHAPES = (  # {n}: the count phrase ("7", "seven", "many", "" or "a"), {o}: colour + noun, {s}: a surface
    "a photo of {n} {o}",
    "a picture of {n} {o} on the {s}",
    "{n} {o} on a {s}",
    "an image with {n} {o}",
    "there are {n} {o} on the {s}",
    "{n} {o}",
)
# Words the captions use besides colours, classes and numbers: the reference-web tokenizer keeps each whole,
# and a few more that people put in requests ("exactly 7 ...", "I want ...", "a dozen ...").
CAPTION_WORDS: tuple[str, ...] = (
    "a", "an", "the", "photo", "picture", "image", "of", "on", "with", "there", "are", "is", "few", "some",
    "several", "many", *SURFACES,
)
REQUEST_WORDS: tuple[str, ...] = (
    "and", "in", "exactly", "precisely", "only", "just", "dozen", "pair", "couple", "i", "want", "please",
    "draw", "show", "me",
)


def scene_count(cls: str, rng: np.random.Generator) -> int:
    """How many objects of ``cls`` a web-like scene holds: its typical count ±1 mostly, any count sometimes."""
    if rng.random() < TAIL:
        return int(rng.integers(MIN_COUNT, MAX_COUNT + 1))
    return int(np.clip(TYPICAL_COUNT[cls] + rng.integers(-1, 2), MIN_COUNT, MAX_COUNT))


def stated_probability(count: int) -> float:
    return STATED.get(count, STATED_LARGE)


def web_caption(cls: str, colour: str, count: int, rng: np.random.Generator) -> str:
    """One caption for a scene of ``count`` ``colour`` ``cls`` objects, as a web page might write it."""
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    noun = cls if count == 1 else PLURALS[cls]
    if count == 1:
        # "a red circle" states the count as surely as "1 red circle"; "there are" becomes "there is".
        number = "a" if rng.random() < 0.5 else str(rng.choice(["1", "one"]))
        number = number if rng.random() < stated_probability(1) else ""
        shape = shape.replace("there are", "there is")
    elif rng.random() < stated_probability(count):
        number = str(count) if rng.random() < 0.5 else NUMBER_NAMES[count]
    else:
        fitting = [w for w, counts in VAGUE.items() if count in counts]
        options = fitting + [""]  # saying nothing about the number is as common as any one vague word
        number = options[int(rng.integers(len(options)))]
    surface = SURFACES[int(rng.integers(len(SURFACES)))]
    text = shape.format(n=number, o=f"{colour} {noun}", s=surface)
    return " ".join(text.split())


def web_vocabulary() -> tuple[str, ...]:
    """Every word a reference-web caption or ordinary request uses, each to be one token."""
    words = (*CAPTION_WORDS, *REQUEST_WORDS, *COLOURS, *CLASSES, *(PLURALS[c] for c in CLASSES),
             *NUMBER_NAMES[1:])
    return tuple(dict.fromkeys(words))
