import numpy as np
import pytest
import torch

from optimization.config import VerifyConfig
from optimization.counter import Detections, count, verify
from optimization.errors import InvalidRequest
from optimization.prompts import resolve_class
from optimization.reference.crosscheck import crosscheck_count, judge
from optimization.reference.scenes import CLASSES, NEGATIVE_KINDS, UNCLEAR, render_scene
from optimization.seeds import TEST_FRESH as FRESH


def _tensor(images):
    return torch.from_numpy(np.stack([np.asarray(i) for i in images])).permute(0, 3, 1, 2).float() / 255


def test_shipped_detector_counts_fresh_rendered_scenes(counter):
    scenes = [render_scene(FRESH + i) for i in range(100)]
    dets = counter.detect(_tensor([s.image for s in scenes]))
    exact = np.mean([count(counter, d, s.objects[0].cls) == s.count for s, d in zip(scenes, dets)])
    assert exact >= 0.95


def test_detector_boxes_are_in_image_pixels(counter):
    scene = render_scene(FRESH + 1000, count=3, cls="square")
    det = counter.detect(_tensor([scene.image]))[0].of("square", counter.config.count_confidence)
    for (x0, y0, x1, y1) in det.boxes:
        centre = ((x0 + x1) / 2, (y0 + y1) / 2)
        assert any(b[0] <= centre[0] <= b[2] and b[1] <= centre[1] <= b[3] for b in (o.box for o in scene.objects))


def test_counter_knows_the_reference_classes(counter):
    assert counter.classes == list(CLASSES)  # requestable objects: the doubt class is not one
    assert counter.names == [*CLASSES, UNCLEAR] and counter.config.doubt_classes == [UNCLEAR]


def test_hard_negatives_are_not_counted_and_make_an_image_doubtful(counter):
    """Merged blobs, fragments, smears and stripes beside clean objects: the objects are counted, the negatives
    are not, and the image is not verified (a wrong "verified" is worse than an honest "not verified")."""
    scenes = [render_scene(FRESH + 3000 + i, count=1 + i % 8, negatives=1 + i % 2) for i in range(120)]
    assert {n.kind for s in scenes for n in s.negatives} == set(NEGATIVE_KINDS)
    dets = counter.detect(_tensor([s.image for s in scenes]))
    counted = [count(counter, d, s.objects[0].cls) == s.count for s, d in zip(scenes, dets)]
    verdicts = [verify(d, s.objects[0].cls, s.count, counter.config) for s, d in zip(scenes, dets)]
    assert np.mean(counted) >= 0.9
    assert np.mean([not v.verified for v in verdicts]) >= 0.9
    assert sum(v.reason == "unclear_shapes" for v in verdicts) >= 0.8 * len(verdicts)
    clean = [render_scene(FRESH + 3000 + i, count=1 + i % 8) for i in range(120)]  # same seeds, no negatives
    clean_verdicts = [verify(d, s.objects[0].cls, s.count, counter.config)
                      for s, d in zip(clean, counter.detect(_tensor([s.image for s in clean])))]
    assert np.mean([v.verified for v in clean_verdicts]) >= 0.9


@pytest.mark.parametrize("name, cls", [("triangles", "triangle"), ("Crosses", "cross"), ("circle", "circle")])
def test_plural_and_case_resolve_to_the_class(name, cls):
    assert resolve_class(name, list(CLASSES)) == cls


def test_unknown_object_lists_the_known_ones():
    with pytest.raises(ValueError, match="known objects: circle, cross, square, triangle"):
        resolve_class("hexagons", list(CLASSES))


def test_crosscheck_counts_rendered_scenes_exactly():
    for seed in range(FRESH, FRESH + 200):
        scene = render_scene(seed)
        assert crosscheck_count(np.asarray(scene.image)) == scene.count


@pytest.mark.parametrize("drawn, counted", [("stain", False), ("shape", True)])
def test_crosscheck_leaves_out_a_faint_stain_and_calls_the_image_unclean(drawn, counted):
    scene = render_scene(FRESH + 300, count=3, cls="circle")
    image = np.asarray(scene.image).copy()
    x, y = next((x, y) for y in range(1, 56) for x in range(1, 56)  # a spot 2 px clear of every shape
                if all(x + 9 <= b[0] or b[2] + 2 <= x or y + 9 <= b[1] or b[3] + 2 <= y
                       for b in (o.box for o in scene.objects)))
    background = image[y, x].astype(int)
    image[y:y + 7, x:x + 7] = background - 50 if drawn == "stain" else (200, 30, 30)  # ~87 away vs ~250
    seen = judge(image)
    assert judge(np.asarray(scene.image)).clean
    assert seen.count == crosscheck_count(image) == 3 + counted
    assert seen.clean == counted  # a 7 px square among circles is a whole shape; a stain leaves the image in doubt


# ------------------------------------------------------------------------------------------- honest counts
_CONFIG = VerifyConfig(doubt_classes=["unclear"])


def _det(*rows):
    """Detections from (class, confidence) rows, one box each."""
    return Detections([(i, i, i + 1, i + 1) for i in range(len(rows))], [p for _, p in rows], [c for c, _ in rows])


def test_the_detected_count_is_the_confident_count_and_the_doubt_is_reported_beside_it():
    verdict = verify(_det(("circle", 0.9), ("circle", 0.8), ("circle", 0.6), ("unclear", 0.3), ("square", 0.7),
                          ("square", 0.3)), "circle", 2, _CONFIG, crosscheck=4)
    report = verdict.to_dict()
    assert (report["detected_count"], report["confident"], report["ambiguous"], report["unclear"],
            report["other_class"], report["crosscheck_count"]) == (2, 2, 1, 1, 1, 4)
    assert len(report["boxes"]) == len(report["confidences"]) == 2  # the confident ones
    assert [d["kind"] for d in report["detections"]] == ["confident", "confident", "ambiguous", "unclear", "other_class"]
    assert report["verified"] is False and report["reason"] == "ambiguous_detections"


def test_the_reference_models_verify_every_shape_their_detector_counts():
    """The reference detector's bar was measured (docs/measured.md, "Detector"): from the counting confidence, 0.5, a
    shape counts and verifies; under it, it is doubt. The default bar (0.7) would doubt a shape seen at 0.6."""
    from optimization.reference.models import reference_models

    sure, unsure = _det(("circle", 0.9), ("circle", 0.6)), _det(("circle", 0.9), ("circle", 0.45))
    for spec in reference_models():
        assert verify(sure, "circle", 2, spec.verify).verified
        assert verify(unsure, "circle", 1, spec.verify).reason == "ambiguous_detections"
    assert verify(sure, "circle", 1, _CONFIG).reason == "ambiguous_detections"


def test_the_mirrored_view_finds_each_shape_where_it_is(counter, reference_spec):
    """Reading the mirrored image too (``mirrored_view``, on for the reference detector by measurement) puts its
    predictions back in place: on scenes laid out off the middle, the same shapes are found at the same boxes as by
    one view, and the potential stays differentiable through both views."""
    from optimization.yolo import YoloCounter

    assert counter.config.mirrored_view
    one_view = YoloCounter(reference_spec.detector, config=counter.config.model_copy(update={"mirrored_view": False}))
    scenes = [render_scene(FRESH + 5000 + i, count=1 + i % 6) for i in range(24)]
    images = _tensor([s.image for s in scenes])
    for scene, both, one in zip(scenes, counter.detect(images), one_view.detect(images)):
        cls, conf = scene.objects[0].cls, counter.config.verify_confidence
        assert count(counter, both, cls) == count(counter, one, cls) == scene.count
        for box in both.of(cls, conf).boxes:
            assert min(max(abs(a - b) for a, b in zip(box, other)) for other in one.of(cls, conf).boxes) < 1.5
    images.requires_grad_(True)
    counter.class_scores(counter.raw(images)).sum().backward()
    assert images.grad.abs().sum() > 0
    with pytest.raises(InvalidRequest, match="one prediction per grid cell"):  # a head this cannot mirror
        counter._unmirror(torch.zeros(1, 4 + len(counter.names), 300))


def test_misses_rank_doubt_against_the_image():
    exact_but_doubtful = verify(_det(("circle", 0.9), ("circle", 0.9), ("circle", 0.4), ("unclear", 0.5)), "circle", 2,
                                _CONFIG)
    one_short_and_clean = verify(_det(("circle", 0.9)), "circle", 2, _CONFIG)
    assert one_short_and_clean.miss < exact_but_doubtful.miss
    assert one_short_and_clean.miss == 1 and exact_but_doubtful.miss == 2


def test_the_jittered_potential_keeps_the_count_and_its_gradient_reaches_the_image(counter):
    from optimization.count_loss import class_potential, jitter

    scene = render_scene(FRESH + 77, count=5, cls="circle", colour="red")
    images = _tensor([scene.image]).requires_grad_(True)
    generator = torch.Generator().manual_seed(0)
    assert jitter(images, generator).shape == images.shape
    scores = counter.class_scores(counter.raw(images))
    plain = class_potential(counter, images, scores, 0, 0, generator)
    averaged = class_potential(counter, images, scores, 0, 4, generator)
    assert torch.equal(plain, scores[:, 0].sum(-1))
    assert abs(averaged.item() - plain.item()) < 0.3 * plain.item()  # the same objects, seen a little differently
    averaged.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
