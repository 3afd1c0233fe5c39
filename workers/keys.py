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

    def queue_owners(self, model_id: str) -> str:
        """Owner of each job in a model's user queue (fair dispatch)."""
        return f"{self.prefix}-{model_id}:owners"

    def queue_owner_counts(self, model_id: str) -> str:
        """How many jobs each owner has in a model's user queue (fair dispatch's fast path)."""
        return f"{self.prefix}-{model_id}:owner-counts"

    def job_record(self, job_id: str) -> str:
        """A job's public record: what ``GET /v1/jobs/{id}`` shows, one read (``records``)."""
        return f"{self.prefix}:job:{job_id}:record"

    def job_images(self, job_id: str, n: int) -> str:
        return f"{self.prefix}:job:{job_id}:image:{n}"

    def job_events(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}:events"

    def job_cancel(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}:cancel"

    def owner_jobs(self, owner: str, status: str | None = None) -> str:
        """An owner's job ids by submission time (``GET /v1/jobs``); with ``status``, those in that status
        now (``records.save_record`` keeps them)."""
        return f"{self.prefix}:owner:{owner}:jobs" + (f":{status}" if status else "")

    def idempotency(self, owner: str, key: str) -> str:
        return f"{self.prefix}:idempotency:{owner}:{key}"

    def token(self, key_id: str) -> str:
        return f"{self.prefix}:token:{key_id}"

    def token_index(self) -> str:
        return f"{self.prefix}:tokens"

    def library_lock(self, key_id: str) -> str:
        return f"{self.prefix}:library-lock:{key_id}"

    def library_state(self, key_id: str) -> str:
        """Where a sliced library task keeps its optimizer state between slices."""
        return f"{self.prefix}:library-state:{key_id}"

    def library_cancel(self, key_id: str) -> str:
        return f"{self.prefix}:library-cancel:{key_id}"

    def library_no_gain(self, key_id: str) -> str:
        """A key whose learning found no gain (its figures), until it may be retried."""
        return f"{self.prefix}:library-no-gain:{key_id}"

    def learning(self, key_id: str) -> str:
        """A library task's public progress (``GET /v1/tokens/learning``)."""
        return f"{self.prefix}:learning:{key_id}"

    def learning_index(self) -> str:
        return f"{self.prefix}:learning"

    def worker(self, model_id: str, name: str) -> str:
        return f"{self.prefix}:worker:{model_id}:{name}"

    def model_workers(self, model_id: str) -> str:
        """A model's workers, scored by when each one's heartbeat lapses (``queue.live_workers``)."""
        return f"{self.prefix}:model:{model_id}:workers"

    def model_last_beat(self, model_id: str) -> str:
        """When a worker of the model last beat (``recovery.fail_jobs_without_worker``)."""
        return f"{self.prefix}:model:{model_id}:last-beat"

    def upkeep(self) -> str:
        """Held for a period by the API process doing the upkeep (``recovery.upkeep``), so one does it."""
        return f"{self.prefix}:upkeep"

    def token_library_indexed(self) -> str:
        """Set once a token store has been indexed in Redis; gone after a flush, so the upkeep re-indexes."""
        return f"{self.prefix}:tokens:indexed"

    def model_info(self, model_id: str) -> str:
        return f"{self.prefix}:model:{model_id}"

    def api_keys(self) -> str:
        """API-key records by the SHA-256 of the key (``auth.KeyStore``)."""
        return f"{self.prefix}:api-keys"

    def rate_window(self, key_id: str) -> str:
        """An API key's recent request times (``rate_limit.Limiter``'s moving window)."""
        return f"{self.prefix}:rate:{key_id}"

    def open_streams(self, owner: str) -> str:
        """An owner's open event streams, scored by when each lapses (``streams.StreamSlots``)."""
        return f"{self.prefix}:owner:{owner}:streams"

    def owner_active(self, owner: str) -> str:
        """An owner's queued and running jobs (the active-jobs quota)."""
        return f"{self.prefix}:owner:{owner}:active"

    def webhook_events(self) -> str:
        """One stream of the events of jobs with a webhook, read by the dispatchers as a consumer group."""
        return f"{self.prefix}:webhooks:events"

    def webhook_retries(self) -> str:
        """Deliveries to try again, scored by when."""
        return f"{self.prefix}:webhooks:retries"

    def webhook_master(self) -> str:
        """The deployment secret every key's webhook secret derives from."""
        return f"{self.prefix}:webhooks:master"

    def webhook_throttle(self, job_id: str) -> str:
        return f"{self.prefix}:webhooks:throttle:{job_id}"

    def readiness_probe(self) -> str:
        """Written by ``/readyz``: an API is ready only while Redis accepts writes."""
        return f"{self.prefix}:readiness-probe"

    def metrics(self) -> str:
        """A hash of counters; ``library_tasks_started:<key id>`` counts per key."""
        return f"{self.prefix}:metrics"
