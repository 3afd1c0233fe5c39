"""The words a job's life is told in, shared by the API, the workers and ``tally.client``: importable
without Redis, RQ or any other part of the service."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal


class JobStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    canceled = "canceled"


TERMINAL = {JobStatus.succeeded, JobStatus.failed, JobStatus.canceled}


class LearningStatus(StrEnum):
    """A background library-learning task's status (``workers.library``)."""

    queued = "queued"
    running = "running"
    canceling = "canceling"
    canceled = "canceled"
    stored = "stored"  # its token beat the base prompt and entered the library
    no_gain = "no_gain"  # it did not; the key is not learned again soon
    failed = "failed"

WebhookEvent = Literal["start", "progress", "completed"]
EVENTS: tuple[str, ...] = ("start", "progress", "completed")
DEFAULT_EVENTS: tuple[str, ...] = ("start", "completed")
