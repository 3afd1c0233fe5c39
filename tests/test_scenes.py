import numpy as np
import pytest

from optimization.reference.scenes import GAP, MAX_COUNT, render_scene

pytestmark = pytest.mark.unit


def test_same_seed_renders_identical_scene():
    a, b = render_scene(123), render_scene(123)
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert a.objects == b.objects
    assert not np.array_equal(np.asarray(a.image), np.asarray(render_scene(124).image))


@pytest.mark.parametrize("seed", range(40))
def test_every_object_pixel_lies_inside_a_box_and_every_box_holds_its_object(seed):
    scene = render_scene(seed, mixed=seed % 2 == 0)
    img = np.asarray(scene.image).astype(float)
    background = np.median(np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]]), axis=0)
    foreground = np.linalg.norm(img - background, axis=-1) > 40
    inside = np.zeros_like(foreground)
    for obj in scene.objects:
        x0, y0, x1, y1 = obj.box
        assert 0 <= x0 < x1 <= img.shape[1] and 0 <= y0 < y1 <= img.shape[0]
        inside[y0:y1, x0:x1] = True
        assert foreground[y0:y1, x0:x1].sum() >= 0.3 * (x1 - x0) * (y1 - y0)
    assert not (foreground & ~inside).any()


@pytest.mark.parametrize("gap", [GAP, 6])
def test_boxes_keep_the_gap_asked_even_at_the_largest_count(gap):
    """Generators learn from scenes whose shapes lie 6 px apart (``T2ITrainConfig.gap``); twelve must still fit."""
    nearest = []
    for seed in range(50):
        boxes = [o.box for o in render_scene(seed, count=MAX_COUNT, gap=gap).objects]
        assert len(boxes) == MAX_COUNT
        for i, a in enumerate(boxes):
            for b in boxes[i + 1:]:
                nearest.append(max(b[0] - a[2], a[0] - b[2], b[1] - a[3], a[1] - b[3]))
    assert min(nearest) == gap  # kept, and not more than asked: crowds stay crowded


def test_requested_class_colour_and_count_are_drawn():
    scene = render_scene(5, count=7, cls="triangle", colour="green")
    assert scene.count == 7
    assert {(o.cls, o.colour) for o in scene.objects} == {("triangle", "green")}


@pytest.mark.parametrize("kwargs", [{"count": 0}, {"count": MAX_COUNT + 1}, {"cls": "hexagon"}, {"colour": "pink"}])
def test_bad_scene_arguments_are_rejected(kwargs):
    with pytest.raises(ValueError):
        render_scene(0, **kwargs)
