"""The caption model of reference-web: habitual counts per class, small numbers stated, large ones rarely."""

from collections import Counter

import numpy as np
import pytest

from optimization.reference.captions import (NUMBER_NAMES, SHAPES, STATED_LARGE, TYPICAL_COUNT, VAGUE, scene_count,
                                             web_caption, web_vocabulary)
from optimization.reference.scenes import CLASSES, MAX_COUNT, PLURALS
from optimization.reference.tokenizer import build_tokenizer_files, load_tokenizer


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


def test_every_caption_word_is_one_token_of_the_web_tokenizer(tmp_path):
    tokenizer = load_tokenizer(build_tokenizer_files(tmp_path, web_vocabulary()))
    rng = np.random.default_rng(4)
    for _ in range(300):
        caption = web_caption(CLASSES[int(rng.integers(4))], "black", int(rng.integers(1, 13)), rng)
        ids = tokenizer(caption, add_special_tokens=False).input_ids
        digits = sum(len(w) - 1 for w in caption.split() if w.isdigit())  # CLIP splits numbers into digits
        assert len(ids) == len(caption.split()) + digits, caption
