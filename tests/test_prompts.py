import pytest

from optimization.prompts import object_in_prompt, with_count

CLASSES = ["circle", "square", "triangle", "cross"]


@pytest.mark.parametrize("prompt, cls, expected", [
    ("a photo of red circles", "circle", "a photo of 7 red circles"),
    ("a photo of 3 red circles", "circle", "a photo of 7 red circles"),
    ("a photo of some blue squares on a table", "square", "a photo of 7 blue squares on a table"),
    ("crosses", "cross", "7 crosses"),
    ("a photo of a cat", "circle", "a photo of a cat (7 circles)"),
    ("a photo of a red circle", "circle", "a photo of 7 red circles"),
])
def test_count_goes_right_before_the_object_phrase(prompt, cls, expected):
    assert with_count(prompt, cls, 7) == expected


@pytest.mark.parametrize("prompt, expected", [
    ("a photo of red circles", "a photo of 1 red circle"),
    ("a photo of a red circle", "a photo of 1 red circle"),
    ("a photo of red circles, on a table", "a photo of 1 red circle, on a table"),
])
def test_one_object_is_named_in_the_singular(prompt, expected):
    assert with_count(prompt, "circle", 1) == expected


def test_the_prompt_must_name_exactly_one_known_object():
    assert object_in_prompt("a photo of 4 green triangles", CLASSES) == "triangle"
    with pytest.raises(ValueError, match="no known object"):
        object_in_prompt("a photo of apples", CLASSES)
    with pytest.raises(ValueError, match="several objects"):
        object_in_prompt("circles and squares", CLASSES)
