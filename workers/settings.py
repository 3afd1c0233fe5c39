"""The one settings object of Tally, shared by the API, the workers and the CLI (env prefix ``TALLY_``).

Every default is declared once: here for the deployment, in ``optimization.config`` for the algorithm
(budgets, refine and library learning, verification thresholds, the model entry). Models are a list
(``TALLY_MODELS`` as JSON of ``optimization.config.ModelSpec``); each gets its own queue and its own
workers. The default is the shipped reference world; production sets e.g.
``TALLY_MODELS='[{"id": "sdxl-turbo", "pipeline": "stabilityai/sdxl-turbo", "detector": "/models/yolo11x.pt",
"device": "cuda", "dtype": "fp16"}]'``.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from optimization.config import GENERATION_BATCH, Budget, LibraryConfig, ModelSpec, NoiseConfig, Policy, RefineConfig
from optimization.errors import InvalidRequest
from optimization.policy import DEFAULT_POLICY, default_for
from optimization.reference.models import reference_models


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TALLY_", env_nested_delimiter="__", extra="ignore")

    runtime_dir: Path = Field(Path(".tally"), description="Datasets, training runs, Redis data, ultralytics settings.")
    token_dir: Path | None = Field(None, description="Durable count-token files; default <runtime_dir>/tokens.")
    store: str | None = Field(None, description=(
        "Object store for result images and token files: s3://BUCKET[/PREFIX] on any S3-API server (workers.objects); "
        "None: tokens in token_dir, images in Redis."))
    s3_endpoint_url: str | None = Field(None, description="The S3 server (e.g. http://minio:9000); default "
                                                          "AWS_ENDPOINT_URL, else AWS itself.")
    s3_public_endpoint_url: str | None = Field(None, description="Where clients reach that server, if elsewhere: "
                                                                 "presigned URLs are signed for it.")
    store_presign: bool = Field(False, description="Image requests answer 307 to a presigned URL of the stored PNG "
                                                   "rather than streaming it through the API.")
    store_presign_seconds: int = Field(300, ge=1, le=604_800, description="How long a presigned URL works.")
    store_create_bucket: bool = Field(False, description="Create the bucket if it is missing (tests, a fresh MinIO).")
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = "tally"
    models: list[ModelSpec] = Field(default_factory=reference_models)
    default_model: str = "reference"

    default_policy: Policy = Field(DEFAULT_POLICY, description="For models whose entry names none.")
    max_prompt_length: int = 500
    max_images: int = 8
    default_budget: Budget = Budget()
    max_budget: Budget = Budget(max_seconds=600.0, max_candidates=1024, max_iterations=500)
    refine: RefineConfig = RefineConfig()
    noise: NoiseConfig = NoiseConfig()  # its reserve is refine's (TALLY_REFINE__RESERVE)
    library: LibraryConfig = LibraryConfig()
    webhook_allow_private: bool = Field(False, description=(
        "Allow webhooks to loopback and private addresses (tests, one trusted network); else they are refused "
        "on submit and before each delivery."))
    webhook_timeout_s: float = Field(5.0, gt=0, description="Seconds a receiver has to answer a delivery.")
    webhook_max_attempts: int = Field(8, ge=1, description="Deliveries of one event before it is given up "
                                                           "(backoff 1, 2, 4 ... s).")
    library_slice_seconds: float = Field(10.0, gt=0, description=(
        "Library learning runs in slices of about this long, re-queued behind user jobs: a user job waits "
        "at most one slice for a worker busy learning."))
    library_retry_after_s: int = Field(86_400, ge=0, description=(
        "A key whose learning found no gain is not learned again for this long."))

    auth: Literal["required", "off"] = Field(
        "required", description="API keys: 'required' (the default; `tally keys create`), or 'off' for loopback "
                                "development (`tally up` on 127.0.0.1 sets it): one implicit owner per X-API-Key value.")
    keys_file: Path | None = Field(None, description="Durable API-key records (hashes only); default <runtime_dir>/keys.json.")
    admin_key_file: Path | None = Field(None, description="A file (e.g. a Docker secret) holding an admin key the "
                                                          "API accepts from its first start, for deployments.")
    rate_limit: str = Field("600/minute", description="Requests per key (a `limits` rate string).")
    api_workers: int = Field(2, ge=1, description="API processes `tally up` starts (uvicorn workers on one port); "
                                                  "the API scales by processes, one core each.")
    max_active_jobs: int = Field(32, ge=1, description="Queued plus running jobs per key.")
    public_url: str | None = Field(None, description="Base of the links the API returns (e.g. https://tally.example); "
                                                     "None: links are paths, never built from the Host header.")
    max_body_bytes: int = Field(2 << 20, description="Largest request body the API reads.")
    max_token_bytes: int = Field(1 << 20, description="Largest token file accepted (a token is a few KB).")
    result_ttl: int = Field(86_400, description="Seconds images and job records are kept.")
    job_timeout: int = 1_800
    library_timeout: int = 7_200
    job_retries: int = Field(5, ge=0, description=(
        "Runs a job gets after its worker died under it (or stopped): a job that keeps killing workers fails "
        "after this many, the others survive a busy night of restarts."))
    worker_heartbeat_s: float = 5.0
    no_worker_timeout_s: float = Field(300.0, gt=0, description=(
        "A job whose model has had no live worker this long fails with no_worker (queued with queue_if_offline, "
        "or running when its worker died with no other to take it over): jobs end."))
    batch_size: int = Field(GENERATION_BATCH, ge=1, description=(
        "Images per pipeline call shared by queued jobs of one model (cross-job batching); a worker takes up to "
        "this many queued resample/library jobs together. 1: each job alone."))
    sse_heartbeat_s: float = Field(15.0, gt=0, description="An idle event stream sends a comment this often.")
    max_streams_per_key: int = Field(16, ge=1, description="Event streams one key may hold open at once (each "
                                                          "holds a Redis connection); 429 past it.")
    log_format: Literal["json", "text"] = Field(
        "json", description="Worker logs on stderr: 'json' (one object a line, with worker, model and job_id, for a "
                            "log collector) or 'text' (for a terminal).")

    @field_validator("store")
    @classmethod
    def _store_location(cls, value: str | None) -> str | None:
        """A clear error at start for anything but s3://BUCKET[/PREFIX]; empty means none."""
        from .objects import StoreLocation

        if not value:
            return None
        StoreLocation.parse(value)
        return value

    @property
    def tokens_path(self) -> Path:
        return self.token_dir or self.runtime_dir / "tokens"

    @property
    def keys_path(self) -> Path:
        return self.keys_file or self.runtime_dir / "keys.json"

    def model(self, model_id: str | None = None) -> ModelSpec:
        wanted = model_id or self.default_model
        for m in self.models:
            if m.id == wanted:
                return m
        raise InvalidRequest(f"unknown model {wanted!r}; configured: {', '.join(m.id for m in self.models)}")

    def policy_for(self, spec: ModelSpec) -> Policy:
        return default_for(spec, self.default_policy)

    def prepare_runtime(self) -> None:
        """Create the runtime dir and keep ultralytics' settings file inside it rather than in $HOME."""
        self.runtime_dir.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("YOLO_CONFIG_DIR", str((self.runtime_dir / "ultralytics").resolve()))
        os.environ.setdefault("YOLO_VERBOSE", "False")


@lru_cache
def get_settings() -> Settings:
    return Settings()
