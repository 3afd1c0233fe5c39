import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from optimization.prompts import NUMBER_WORDS, object_in_prompt, plural, with_count
from optimization.reference import CLASSES

pytestmark = pytest.mark.unit

# ------------------------------------------------------------------------------------ the phrasings


@pytest.mark.parametrize("prompt, cls, expected", [
    ("two red circles", "circle", "7 red circles"),
    ("exactly five red squares on a table", "square", "exactly 7 red squares on a table"),
    ("I want 6 triangles please", "triangle", "I want 7 triangles please"),
    ("a dozen circles", "circle", "7 circles"),
    ("a pair of blue crosses", "cross", "7 blue crosses"),
    ("a photo of a couple of squares", "square", "a photo of 7 squares"),
    ("precisely twelve small shiny triangles", "triangle", "precisely 7 small shiny triangles"),
    ("only 3 circles", "circle", "only 7 circles"),
    ("there are twenty-one red circles", "circle", "there are 7 red circles"),
    ("I want a few green squares", "square", "I want 7 green squares"),
])
def test_a_stated_count_is_replaced_where_it_stands(prompt, cls, expected):
    assert with_count(prompt, cls, 7) == expected


@pytest.mark.parametrize("prompt, cls, expected", [
    ("a photo of red circles", "circle", "a photo of 7 red circles"),
    ("a photo of 3 red circles", "circle", "a photo of 7 red circles"),
    ("a photo of some blue squares on a table", "square", "a photo of 7 blue squares on a table"),
    ("crosses", "cross", "7 crosses"),
    ("a photo of a cat", "circle", "a photo of a cat (7 circles)"),
    ("a photo of a red circle", "circle", "a photo of 7 red circles"),
    ("draw me shiny triangles", "triangle", "draw me 7 shiny triangles"),
])
def test_count_goes_right_before_the_object_phrase(prompt, cls, expected):
    assert with_count(prompt, cls, 7) == expected


@pytest.mark.parametrize("prompt, expected", [
    ("circles: 5", "7 circles"),
    ("red circles: five, on a table", "7 red circles, on a table"),
    ("a photo of circles (5) on a table", "a photo of 7 circles on a table"),
    ("a photo of red circles, 5 of them, on a table", "a photo of 7 red circles, on a table"),
    ("three circles: 5", "7 circles"),
])
def test_a_count_after_the_noun_moves_before_it(prompt, expected):
    assert with_count(prompt, "circle", 7) == expected


def test_there_is_and_there_are_agree_with_the_count():
    assert with_count("there is a circle", "circle", 3) == "there are 3 circles"
    assert with_count("There are exactly five red circles here", "circle", 1) == "There is exactly 1 red circle here"


@pytest.mark.parametrize("prompt, expected", [
    ("a photo of 10 red circles", "a photo of many red circles"),
    ("I need exactly one circle please", "I need many circles please"),  # "exactly many" is no English
    ("there is a circle", "there are many circles"),
    ("a photo of a cat", "a photo of a cat (many circles)"),
])
def test_a_crowd_word_takes_the_place_of_the_count(prompt, expected):
    assert with_count(prompt, "circle", "many") == expected


@pytest.mark.parametrize("prompt, expected", [
    ("two red and blue circles", "7 red and blue circles"),
    ("a photo of small, shiny circles", "a photo of 7 small, shiny circles"),
    ("a cat and red circles", "a cat and 7 red circles"),  # "cat" is no known adjective: "and" ends the phrase
])
def test_adjective_lists_of_known_adjectives_stay_in_the_noun_phrase(prompt, expected):
    assert with_count(prompt, "circle", 7) == expected


@pytest.mark.parametrize("prompt, expected", [
    ("a photo of red circles", "a photo of 1 red circle"),
    ("a photo of a red circle", "a photo of 1 red circle"),
    ("a photo of red circles, on a table", "a photo of 1 red circle, on a table"),
    ("a pair of circles", "1 circle"),
])
def test_one_object_is_named_in_the_singular(prompt, expected):
    assert with_count(prompt, "circle", 1) == expected


def test_the_prompt_must_name_exactly_one_known_object():
    assert object_in_prompt("a photo of 4 green triangles", list(CLASSES)) == "triangle"
    with pytest.raises(ValueError, match="no known object"):
        object_in_prompt("a photo of apples", list(CLASSES))
    with pytest.raises(ValueError, match="several objects"):
        object_in_prompt("circles and squares", list(CLASSES))


# --------------------------------------------------------------------------- generated phrasings (properties)
LEAD_INS = ["", "a photo of", "a picture of", "I want", "there are", "there is", "draw", "show me", "please make"]
MODIFIERS = ["", "exactly", "precisely", "only"]
ADJECTIVES = ["red", "blue", "green", "small", "shiny", "wooden", "bright-yellow"]
SCENES = ["", "on a table", "please", "in a row", ", photorealistic", "on the grass at night"]
_numbers = st.one_of(st.sampled_from(sorted(NUMBER_WORDS)), st.integers(0, 99).map(str))
_stated = st.one_of(st.just(""), _numbers, st.sampled_from(["a dozen", "a pair of", "a couple of", "a", "an",
                                                             "some", "several", "a few"]))
_after = st.one_of(st.just(""), _numbers.flatmap(lambda n: st.sampled_from([f": {n}", f" ({n})", f", {n} of them"])))


@st.composite
def phrasings(draw):
    """(prompt, object, count, parts): a prompt assembled from parts, as people write them."""
    cls = draw(st.sampled_from(CLASSES))
    parts = {"lead_in": draw(st.sampled_from(LEAD_INS)), "modifier": draw(st.sampled_from(MODIFIERS)),
             "stated": draw(_stated), "adjectives": draw(st.lists(st.sampled_from(ADJECTIVES), max_size=2)),
             "noun": plural(cls) if draw(st.booleans()) else cls, "after": draw(_after),
             "scene": draw(st.sampled_from(SCENES))}
    text = " ".join(p for p in [parts["lead_in"], parts["modifier"], parts["stated"], *parts["adjectives"]] if p)
    text = f"{text} {parts['noun']}{parts['after']}".strip()
    scene = parts["scene"]
    text = text + scene if scene.startswith(",") else f"{text} {scene}".rstrip()
    return text, cls, draw(st.integers(1, 12)), parts


def _core(word: str) -> str:
    return re.sub(r"^\W+|\W+$", "", word).lower()


def _is_number(word: str) -> bool:
    return _core(word).isdigit() or _core(word) in NUMBER_WORDS


@settings(derandomize=True, max_examples=200, deadline=None)
@given(phrasings())
def test_the_count_is_stated_once_right_before_the_noun_phrase_and_every_other_word_is_kept(case):
    prompt, cls, count, parts = case
    out = with_count(prompt, cls, count).split()
    numbers = [i for i, w in enumerate(out) if _is_number(w)]
    assert [out[i] for i in numbers] == [str(count)], (prompt, out)  # once, and no other number left
    at = numbers[0]
    phrase = parts["adjectives"] + [cls if count == 1 else plural(cls)]
    assert [_core(w) for w in out[at + 1:at + 1 + len(phrase)]] == phrase, (prompt, out)
    kept = [_core(w) for w in out[:at] + out[at + 1 + len(phrase):]]
    expected = [_core(w) for w in " ".join([parts["lead_in"], parts["modifier"], parts["scene"]]).split()]
    if parts["lead_in"].startswith("there"):  # "there is" / "there are" follows the count
        expected[1] = "is" if count == 1 else "are"
    assert [w for w in kept if w] == [w for w in expected if w], (prompt, out)
