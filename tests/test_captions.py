"""The caption models: reference states every count (rarely off by one); reference-web has habitual counts per
class and states small numbers, large ones rarely; both use the same sentence shapes and request words."""

from collections import Counter

import numpy as np
import pytest

from optimization.reference.captions import (FAITHFUL_NOISE, NUMBER_NAMES, SHAPES, STATED_LARGE, TYPICAL_COUNT, VAGUE,
                                             faithful_caption, scene_count, vocabulary, web_caption)
from optimization.reference.scenes import CLASSES, MAX_COUNT, PLURALS
from optimization.reference.tokenizer import build_tokenizer_files, load_tokenizer

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("cls", CLASSES)
def test_each_class_has_its_habitual_count_and_still_every_count(cls):
    rng = np.random.default_rng(0)
    counts = Counter(scene_count(cls, rng) for _ in range(4000))
    assert set(counts) == set(range(1, MAX_COUNT + 1))  # large counts exist, so a token can reach them
    habit = TYPICAL_COUNT[cls]
    near = sum(counts[n] for n in (habit - 1, habit, habit + 1))
    assert near / 4000 > 0.7
    assert counts.most_common(1)[0][0] in (habit - 1, habit, habit + 1)


def test_small_counts_are_stated_and_large_counts_rarely():
    rng = np.random.default_rng(1)
    rate = {}
    for n in (2, 3, 6, 8, 10):
        captions = [web_caption("square", "red", n, rng) for _ in range(2000)]
        rate[n] = np.mean([str(n) in c.split() or NUMBER_NAMES[n] in c.split() for c in captions])
    assert rate[2] > 0.8 and rate[3] > 0.6
    assert rate[6] < 0.2 and rate[8] < 2 * STATED_LARGE and rate[10] < 2 * STATED_LARGE
    assert rate[2] > rate[3] > rate[6] > rate[8]


def test_stated_numbers_are_true_and_vague_words_fit_the_count():
    rng = np.random.default_rng(2)
    for _ in range(3000):
        n, cls = int(rng.integers(1, MAX_COUNT + 1)), CLASSES[int(rng.integers(4))]
        caption = web_caption(cls, "blue", n, rng)
        words = caption.split()
        numbers = [w for w in words if w.isdigit() or w in NUMBER_NAMES]
        assert all(w in (str(n), NUMBER_NAMES[n]) for w in numbers), caption
        for vague, counts in VAGUE.items():
            if f" {vague} " in f" {caption} ":
                assert n in counts, caption
        assert (PLURALS[cls] if n > 1 else cls) in words and "blue" in words


def test_captions_come_in_several_shapes_with_digits_and_number_words():
    rng = np.random.default_rng(3)
    captions = [web_caption("circle", "green", 2, rng) for _ in range(600)]
    assert len({c.replace("two", "2").split(" 2 ")[0] for c in captions}) >= len(SHAPES) - 1
    assert any(" two " in f" {c} " for c in captions) and any(" 2 " in f" {c} " for c in captions)


def _stated(caption: str) -> list[int]:
    return [int(w) if w.isdigit() else NUMBER_NAMES.index(w) for w in caption.split() if w.isdigit() or w in NUMBER_NAMES]


def test_faithful_captions_state_every_count_and_misstate_large_ones_by_one_rarely():
    rng = np.random.default_rng(5)
    small = [faithful_caption("circle", "red", 3, rng) for _ in range(300)]
    assert all(_stated(c) == [3] for c in small)
    large = [faithful_caption("cross", "blue", 9, rng) for _ in range(2000)]
    assert all("blue crosses" in c and _stated(c)[0] in (8, 9, 10) for c in large)
    wrong = np.mean([_stated(c) != [9] for c in large])
    assert abs(wrong - FAITHFUL_NOISE) < 0.04


def test_some_captions_are_dressed_as_requests():
    rng = np.random.default_rng(6)
    captions = [faithful_caption("square", "green", 7, rng) for _ in range(500)]
    assert any(c.startswith(("i need", "i want")) for c in captions)
    assert any(" exactly " in f" {c} " for c in captions) and any(c.endswith(" please") for c in captions)
    assert np.mean([c.startswith(("a photo of", "a picture of")) for c in captions]) > 0.2


@pytest.mark.parametrize("write", [faithful_caption, web_caption])
def test_every_caption_word_and_every_number_to_twenty_is_one_token(tmp_path, write):
    tokenizer = load_tokenizer(build_tokenizer_files(tmp_path, vocabulary()))
    rng = np.random.default_rng(4)
    for _ in range(300):
        caption = write(CLASSES[int(rng.integers(4))], "black", int(rng.integers(1, 13)), rng)
        ids = tokenizer(caption, add_special_tokens=False).input_ids
        assert len(ids) == len(caption.split()), caption
    for n in range(1, 21):
        assert len(tokenizer(f"{n} {NUMBER_NAMES[n]}", add_special_tokens=False).input_ids) == 2
