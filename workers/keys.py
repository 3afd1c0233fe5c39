"""Every Redis key Tally uses, built in one place (RQ's own keys stay RQ's)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    prefix: str = "tally"

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
        return f"{self.prefix}:metrics"
