"""``JobRequest``: a generation job as the API accepted it and the worker runs it (one typed object).

``build_request`` is the one place where a caller's input becomes a request: the deployment's limits
(each message says what is allowed), the model and object resolved, the seed assigned and the budget
merged over the deployment's default. Torch-free: the API builds requests, workers read them.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from optimization.config import Budget, ModelSpec, Policy
from optimization.errors import InvalidRequest
from optimization.prompts import object_in_prompt, resolve_class

from .settings import Settings
from .statuses import DEFAULT_EVENTS, WebhookEvent
from .webhooks import check_url


class JobRequest(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    prompt: str
    count: int
    object: str | None = Field(description="The detector class; None until a worker of the model has said its classes.")
    num_images: int
    seed: int = Field(ge=0, lt=2**63)
    seed_source: Literal["request", "idempotency_key", "server"] = "request"
    model: str
    policy: Policy
    budget: Budget
    webhook: str | None = None
    webhook_events_filter: tuple[WebhookEvent, ...] = DEFAULT_EVENTS


def build_request(settings: Settings, *, prompt: str, count: int, object_: str | None = None, num_images: int = 1,
                  seed: int | None = None, model: str | None = None, policy: Policy | None = None,
                  budget: dict | None = None,
                  classes_of: Callable[[ModelSpec], list[str] | None] = lambda spec: spec.classes,
                  idempotency_key: str | None = None, max_budget: Budget | None = None,
                  webhook: str | None = None, webhook_events_filter: tuple[str, ...] | None = None) -> JobRequest:
    """A checked request; ``classes_of(spec)``: the model's detector classes when known (else the worker
    resolves the object); ``max_budget``: the caller's ceiling, if lower than the deployment's."""
    if not prompt.strip():
        raise InvalidRequest("prompt: must not be blank")
    if len(prompt) > settings.max_prompt_length:
        raise InvalidRequest(f"prompt: {len(prompt)} characters; at most {settings.max_prompt_length} are allowed")
    try:
        spec = settings.model(model)
    except InvalidRequest as exc:
        raise InvalidRequest(f"model: {exc}") from None
    if not 1 <= count <= spec.max_count:
        raise InvalidRequest(f"count: must be between 1 and {spec.max_count}, got {count}")
    if not 1 <= num_images <= settings.max_images:
        raise InvalidRequest(f"num_images: must be between 1 and {settings.max_images}, got {num_images}")
    overrides = {k: v for k, v in (budget or {}).items() if v is not None}
    for name, value in overrides.items():
        limit = getattr(settings.max_budget, name)
        if max_budget is not None and getattr(max_budget, name) < limit:
            limit = getattr(max_budget, name)
        if value > limit:
            raise InvalidRequest(f"budget.{name}: at most {limit} is allowed, got {value}")
    cls, classes = object_, classes_of(spec)
    if classes is not None:
        try:
            cls = resolve_class(object_, classes) if object_ else object_in_prompt(prompt, classes)
        except InvalidRequest as exc:
            raise InvalidRequest(f"object: {exc}") from None
    source = "request"
    if seed is None:  # a retried request (same idempotency key) must be the same request
        source = "idempotency_key" if idempotency_key else "server"
        seed = (int(hashlib.sha256(idempotency_key.encode()).hexdigest()[:8], 16) if idempotency_key
                else time.time_ns() % 2**31)
    return JobRequest(prompt=prompt, count=count, object=cls, num_images=num_images, seed=seed, seed_source=source,
                      model=spec.id,
                      policy=policy or settings.policy_for(spec),
                      budget=settings.default_budget.model_copy(update=overrides),
                      webhook=check_url(webhook, settings) if webhook else None,
                      webhook_events_filter=tuple(webhook_events_filter or DEFAULT_EVENTS))
