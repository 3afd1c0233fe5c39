"""The caption models of the reference generators, and the words their tokenizer keeps whole.

Both generators see the same scenes' kind of sentences (``SHAPES``: six sentence shapes with scene words,
numbers as digits or words, sometimes dressed as a request: "i need exactly 7 red circles please"), so
ordinary requests read like their training data. They differ in what the captions say about the count:

- ``reference`` (``faithful_caption``): every caption states the count; from five objects on it is off by
  one in ``FAITHFUL_NOISE`` of them. The model draws the number it is told most of the time, like a strong
  modern model.
- ``reference-web`` (``web_caption`` on ``scene_count`` scenes): two habits of real captions that make real
  models miscount large numbers (T2ICountBench, 2025):
  **each kind of object has its habitual number** — most scenes of a class hold about its typical count
  (``TYPICAL_COUNT``, spread ±1), a minority (``TAIL``) any count 1..12, so crowds are drawable but rare;
  **small numbers are stated, large ones rarely** — the chance that a caption states the count falls from
  0.95 for one object to 0.02 for eight or more (``STATED``); otherwise it says "a few", "some",
  "several", "many" (each only where it fits) or nothing. Stated counts are always true.
"""

from __future__ import annotations

import numpy as np

from .scenes import CLASSES, COLOURS, MAX_COUNT, MIN_COUNT, PLURALS

TYPICAL_COUNT: dict[str, int] = {"circle": 3, "square": 4, "triangle": 2, "cross": 5}
TAIL = 0.35  # share of web scenes whose count is uniform over 1..12 instead of near the class's habit
# Six and more as rarely stated as eight (were 0.06 and 0.035 for six and seven, 0.12 and 0.07 before 2026-12-05):
# on the deeper UNet a text encoder learned a stated six from the crosses' habit well enough to verify 0.25 of them,
# more than a model that "miscounts large numbers" should.
STATED: dict[int, float] = {1: 0.95, 2: 0.85, 3: 0.7, 4: 0.45, 5: 0.25}
STATED_LARGE = 0.02  # 6 objects and more
FAITHFUL_NOISE = 0.15  # reference: share of captions of 5+ objects whose stated count is off by one
NUMBER_NAMES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
                "sixteen seventeen eighteen nineteen twenty").split()
NUMBER_DIGITS = tuple(str(n) for n in range(1, 21))  # each one token (tokenizer.NUMBER_TOKENS for 10..20)
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
REQUEST_OPENINGS = ("i want", "i need", "please draw", "draw", "show me", "make", "generate", "give me")
COUNT_MODIFIERS = ("exactly", "precisely", "only", "just")
DRESSED = 0.3  # share of captions dressed as a request (an opening, a modifier before the number, "please")
CAPTION_WORDS: tuple[str, ...] = (
    "a", "an", "the", "photo", "picture", "image", "of", "on", "with", "there", "are", "is", "few", "some",
    "several", "many", *SURFACES,
)
# Words people put in requests besides those ("I need exactly 7 ...", "a dozen ...", "... please").
REQUEST_WORDS: tuple[str, ...] = (
    "and", "in", "exactly", "precisely", "only", "just", "dozen", "pair", "couple", "i", "want", "need", "please",
    "draw", "show", "me", "make", "generate", "give", "can", "you", "would", "like", "to", "see", "it", "at",
    "photograph", "number",
)


def scene_count(cls: str, rng: np.random.Generator) -> int:
    """How many objects of ``cls`` a web-like scene holds: its typical count ±1 mostly, any count sometimes."""
    if rng.random() < TAIL:
        return int(rng.integers(MIN_COUNT, MAX_COUNT + 1))
    return int(np.clip(TYPICAL_COUNT[cls] + rng.integers(-1, 2), MIN_COUNT, MAX_COUNT))


def stated_probability(count: int) -> float:
    return STATED.get(count, STATED_LARGE)


def _number(count: int, rng: np.random.Generator) -> str:
    return str(count) if rng.random() < 0.5 else NUMBER_NAMES[count]


def _sentence(cls: str, colour: str, count: int, number: str, rng: np.random.Generator) -> str:
    """One sentence shape with ``number`` as its count phrase; sometimes dressed as a request."""
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    noun = cls if count == 1 else PLURALS[cls]
    if count == 1:
        shape = shape.replace("there are", "there is")
    dressed = rng.random() < DRESSED
    if dressed and number and number not in ("a", "an") and rng.random() < 0.5:
        number = f"{COUNT_MODIFIERS[int(rng.integers(len(COUNT_MODIFIERS)))]} {number}"
    surface = SURFACES[int(rng.integers(len(SURFACES)))]
    text = shape.format(n=number, o=f"{colour} {noun}", s=surface)
    if dressed and not text.startswith("there"):
        text = f"{REQUEST_OPENINGS[int(rng.integers(len(REQUEST_OPENINGS)))]} {text}"
    if dressed and rng.random() < 0.3:
        text += " please"
    return " ".join(text.split())


def faithful_caption(cls: str, colour: str, count: int, rng: np.random.Generator) -> str:
    """A ``reference`` caption: the count always stated, off by one in ``FAITHFUL_NOISE`` of 5+ scenes."""
    stated = count
    if count >= 5 and rng.random() < FAITHFUL_NOISE:
        stated = int(np.clip(count + rng.choice([-1, 1]), MIN_COUNT, MAX_COUNT))
    return stated_caption(cls, colour, stated, rng)


def stated_caption(cls: str, colour: str, count: int, rng: np.random.Generator) -> str:
    """A ``reference`` sentence stating ``count`` as it is."""
    number = ("a" if rng.random() < 0.5 else _number(1, rng)) if count == 1 else _number(count, rng)
    return _sentence(cls, colour, count, number, rng)


def web_caption(cls: str, colour: str, count: int, rng: np.random.Generator) -> str:
    """One caption for a scene of ``count`` ``colour`` ``cls`` objects, as a web page might write it."""
    if count == 1:
        # "a red circle" states the count as surely as "1 red circle".
        number = "a" if rng.random() < 0.5 else _number(1, rng)
        number = number if rng.random() < stated_probability(1) else ""
    elif rng.random() < stated_probability(count):
        number = _number(count, rng)
    else:
        fitting = [w for w, counts in VAGUE.items() if count in counts]
        options = fitting + [""]  # saying nothing about the number is as common as any one vague word
        number = options[int(rng.integers(len(options)))]
    return _sentence(cls, colour, count, number, rng)


def vocabulary() -> tuple[str, ...]:
    """Every word a caption or an ordinary request uses, each to be one token of both generators."""
    words = (*CAPTION_WORDS, *REQUEST_WORDS, *REQUEST_OPENINGS, *COUNT_MODIFIERS, *COLOURS, *CLASSES,
             *(PLURALS[c] for c in CLASSES), *NUMBER_NAMES[1:])
    return tuple(dict.fromkeys(w for phrase in words for w in phrase.split()))
