"""Unit: the conservative verdict on one image's detections (``optimization.counter.verify``)."""

import math

import pytest

from optimization.config import VerifyConfig
from optimization.counter import Detections, verify

pytestmark = pytest.mark.unit
CONFIG = VerifyConfig(doubt_classes=["unclear"])
BOX = (1.0, 1.0, 9.0, 9.0)


def detections(*found: tuple[str, float]) -> Detections:
    return Detections([BOX] * len(found), [p for _, p in found], [c for c, _ in found])


def test_exactly_the_target_of_confident_detections_and_nothing_else_verifies():
    v = verify(detections(("circle", 0.9), ("circle", 0.8), ("square", 0.3)), "circle", 2, CONFIG)
    assert v.verified and v.reason is None and v.miss == 0 and v.detected_count == 2


@pytest.mark.parametrize("found, crosscheck, reason, miss", [
    ((("circle", 0.9),), None, "count_mismatch", 1),
    ((("circle", 0.9), ("circle", 0.9), ("circle", 0.9)), None, "count_mismatch", 1),
    ((("circle", 0.9), ("circle", 0.9), ("circle", 0.4)), None, "ambiguous_detections", 1),  # one more, perhaps
    ((("circle", 0.9), ("circle", 0.9), ("unclear", 0.2)), None, "unclear_shapes", 1),
    ((("circle", 0.9), ("circle", 0.9)), 3, "crosscheck_disagrees", 1),
])
def test_any_doubt_refuses_the_image_and_says_which(found, crosscheck, reason, miss):
    v = verify(detections(*found), "circle", 2, CONFIG, crosscheck=crosscheck)
    assert not v.verified and v.reason == reason and v.miss == miss


def test_doubt_below_the_floor_and_other_classes_below_count_confidence_are_ignored():
    v = verify(detections(("circle", 0.9), ("circle", 0.1), ("unclear", 0.1), ("cross", 0.4)), "circle", 1, CONFIG)
    assert v.verified and v.other_class == 0


def test_a_degenerate_image_is_never_verified_nor_a_closest_miss():
    v = verify(detections(("circle", 0.9)), "circle", 1, CONFIG, degenerate=True)
    assert not v.verified and v.reason == "degenerate_image" and v.miss == math.inf


def test_the_report_shows_the_confident_count_and_every_doubt_beside_it():
    report = verify(detections(("circle", 0.9), ("circle", 0.4), ("cross", 0.6)), "circle", 1, CONFIG,
                    crosscheck=2).to_dict()
    assert report["detected_count"] == report["confident"] == 1 and len(report["boxes"]) == 1
    assert (report["ambiguous"], report["other_class"], report["crosscheck_count"]) == (1, 1, 2)
    assert [d["kind"] for d in report["detections"]] == ["confident", "ambiguous", "other_class"]


def test_a_confusable_class_detected_surely_may_be_one_of_the_objects_asked_and_refuses_the_image():
    shapes = CONFIG.model_copy(update={"confusable": [["circle", "square"], ["apple", "orange"]]})
    found = detections(("circle", 0.9), ("square", 0.77), ("apple", 0.9))
    v = verify(found, "circle", 1, shapes)  # the square may be a circle misnamed; an apple is no circle
    assert not v.verified and v.reason == "ambiguous_detections" and v.miss == 1
    assert [d["kind"] for d in v.to_dict()["detections"]] == ["confident", "ambiguous", "other_class"]
    assert verify(found, "circle", 1, CONFIG).verified  # not confusable: another object beside the circle
    assert verify(detections(("circle", 0.9), ("square", 0.4)), "circle", 1, shapes).verified  # under count_confidence


def test_with_a_presence_floor_a_shape_the_detector_barely_sees_is_unclear_unless_it_is_a_reported_one():
    faint = CONFIG.model_copy(update={"presence_floor": 0.05})
    elsewhere = (30.0, 30.0, 36.0, 36.0)  # a dot apart from the circle
    found = Detections([BOX, elsewhere], [0.9, 0.08], ["circle", "square"])
    assert verify(found, "circle", 1, CONFIG).verified  # off: below every floor, ignored
    v = verify(found, "circle", 1, faint)
    assert not v.verified and v.reason == "unclear_shapes" and v.doubtful == 1 and v.miss == 1
    assert v.to_dict()["detections"][1] == {"box": list(elsewhere), "kind": "unclear", "object": "square",
                                            "confidence": 0.08}
    # The same faint detection on the circle is the circle seen under another name; under the floor, nothing.
    assert verify(Detections([BOX, BOX], [0.9, 0.08], ["circle", "square"]), "circle", 1, faint).verified
    assert verify(Detections([BOX, elsewhere], [0.9, 0.04], ["circle", "square"]), "circle", 1, faint).verified


def test_a_presence_floor_must_lie_under_the_ambiguous_floor():
    with pytest.raises(ValueError, match="presence_floor"):
        VerifyConfig(presence_floor=0.2)
