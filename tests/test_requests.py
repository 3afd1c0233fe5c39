"""Unit: ``build_request``, the one place a caller's input becomes a job (limits, resolution, seed, budget)."""

import pytest

from optimization.config import Policy
from optimization.errors import InvalidRequest
from workers.requests import build_request
from workers.settings import Settings

pytestmark = pytest.mark.unit


@pytest.fixture
def settings():
    return Settings(default_policy="resample")


def test_a_request_is_resolved_once_model_object_policy_and_budget(settings):
    request = build_request(settings, prompt="a photo of 7 red circles on a table", count=7,
                            budget={"max_candidates": 10, "max_seconds": None})
    assert (request.model, request.object, request.policy) == (settings.models[0].id, "circle", Policy.resample)
    assert request.budget == settings.default_budget.model_copy(update={"max_candidates": 10})
    assert request.seed_source == "server" and 0 <= request.seed < 2**31


def test_a_retried_request_gets_the_same_seed_from_its_idempotency_key(settings):
    a, b = (build_request(settings, prompt="two squares", count=2, idempotency_key="k-1") for _ in range(2))
    c = build_request(settings, prompt="two squares", count=2, idempotency_key="k-2")
    assert a.seed == b.seed != c.seed and a.seed_source == "idempotency_key"


@pytest.mark.parametrize("kwargs, message", [
    ({"prompt": "  "}, "prompt: must not be blank"),
    ({"prompt": "x" * 501}, "prompt: 501 characters; at most 500 are allowed"),
    ({"count": 0}, "count: must be between 1 and 12, got 0"),
    ({"count": 13}, "count: must be between 1 and 12, got 13"),
    ({"num_images": 9}, "num_images: must be between 1 and 8, got 9"),
    ({"model": "sdxl"}, "model: unknown model 'sdxl'"),
    ({"object_": "hexagon"}, "object: unknown object 'hexagon'"),
    ({"prompt": "a photo of apples"}, "object: "),
    ({"budget": {"max_candidates": 5000}}, "budget.max_candidates: at most 1024 is allowed, got 5000"),
])
def test_bad_input_is_refused_with_what_is_allowed(settings, kwargs, message):
    with pytest.raises(InvalidRequest) as caught:
        build_request(settings, **{"prompt": "a photo of red circles", "count": 3, **kwargs})
    assert str(caught.value).startswith(message)


def test_a_keys_lower_ceiling_is_the_limit_it_is_told(settings):
    ceiling = settings.max_budget.model_copy(update={"max_candidates": 32})
    with pytest.raises(InvalidRequest, match="at most 32 is allowed"):
        build_request(settings, prompt="red circles", count=3, budget={"max_candidates": 64}, max_budget=ceiling)
