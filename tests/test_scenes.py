import numpy as np
import pytest

from optimization.reference.scenes import MAX_COUNT, render_scene

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


def test_boxes_never_overlap():
    for seed in range(50):
        boxes = [o.box for o in render_scene(seed, count=MAX_COUNT).objects]
        for i, a in enumerate(boxes):
            for b in boxes[i + 1:]:
                assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]


def test_requested_class_colour_and_count_are_drawn():
    scene = render_scene(5, count=7, cls="triangle", colour="green")
    assert scene.count == 7
    assert {(o.cls, o.colour) for o in scene.objects} == {("triangle", "green")}


@pytest.mark.parametrize("kwargs", [{"count": 0}, {"count": MAX_COUNT + 1}, {"cls": "hexagon"}, {"colour": "pink"}])
def test_bad_scene_arguments_are_rejected(kwargs):
    with pytest.raises(ValueError):
        render_scene(0, **kwargs)
