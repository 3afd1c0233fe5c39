"""The rule that names a model's default policy from `tally bench engine`'s figures."""

import pytest

from optimization.config import Policy
from optimization.policy import MARGIN, MAX_FALSE_VERIFIED, choose_default

pytestmark = pytest.mark.unit


def test_a_policy_must_beat_resampling_by_more_than_the_noise():
    assert choose_default({"resample": 1.0, "noise": MARGIN * 0.99}) == Policy.resample
    assert choose_default({"resample": 1.0, "noise": MARGIN * 1.01}) == Policy.noise


def test_a_policy_that_fools_its_verifier_is_never_the_default_however_fast():
    fast_but_fooled = {"resample": 1.0, "refine": 3.0, "noise": 1.5}
    fooled = {"resample": 0.0, "refine": MAX_FALSE_VERIFIED + 0.001, "noise": MAX_FALSE_VERIFIED}
    assert choose_default(fast_but_fooled, fooled) == Policy.noise
    assert choose_default({"resample": 1.0}, {"resample": 0.5}) == Policy.resample  # none eligible: the default
