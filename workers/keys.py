"""Every Redis key and queue name Tally uses, built in one place (RQ's own keys stay RQ's)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    prefix: str = "tally"

    def generation_queue(self, model_id: str) -> str:
        """RQ queue name of a model's user jobs."""
        return f"{self.prefix}-{model_id}"

    def library_queue(self, model_id: str) -> str:
        """RQ queue name of a model's library-learning tasks."""
        return f"{self.prefix}-{model_id}-library"

    def job_images(self, job_id: str, n: int) -> str:
        return f"{self.prefix}:job:{job_id}:image:{n}"

    def job_events(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}:events"

    def job_cancel(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}:cancel"

    def idempotency(self, owner: str, key: str) -> str:
        return f"{self.prefix}:idempotency:{owner}:{key}"

    def token(self, key_id: str) -> str:
        return f"{self.prefix}:token:{key_id}"

    def token_index(self) -> str:
        return f"{self.prefix}:tokens"

    def library_lock(self, key_id: str) -> str:
        return f"{self.prefix}:library-lock:{key_id}"

    def worker(self, model_id: str, name: str) -> str:
        return f"{self.prefix}:worker:{model_id}:{name}"

    def workers(self, model_id: str) -> str:
        return f"{self.prefix}:worker:{model_id}:*"

    def model_info(self, model_id: str) -> str:
        return f"{self.prefix}:model:{model_id}"

    def metrics(self) -> str:
        """A hash of counters; ``library_tasks_started:<key id>`` counts per key."""
        return f"{self.prefix}:metrics"
