"""The one settings object of Tally, shared by the API, the workers and the CLI (env prefix ``TALLY_``).

Models are a list (``TALLY_MODELS`` as JSON); each gets its own queue and its own workers. The default
is the shipped reference world; production sets e.g.
``TALLY_MODELS='[{"id": "sdxl-turbo", "pipeline": "stabilityai/sdxl-turbo", "detector": "/models/yolo11x.pt",
"device": "cuda", "dtype": "fp16"}]'``.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from optimization.policy import DEFAULT_POLICY, POLICIES
from optimization.reference import DETECTOR_PATH, MAX_COUNT, PIPELINE_PATH


class ModelConfig(BaseModel):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")
    pipeline: str = Field(description="diffusers pipeline: hub id or local folder.")
    detector: str = Field(description="ultralytics YOLO weights (.pt).")
    device: str = "cpu"
    dtype: str = "fp32"
    num_inference_steps: int | None = None
    guidance_scale: float | None = None


class BudgetLimits(BaseModel):
    max_seconds: float = 60.0
    max_candidates: int = 64
    max_iterations: int = 20


class LibraryConfig(BaseModel):
    """How background library learning runs (per key): fresh seeds per iteration, held-out validation."""

    iterations: int = 30
    seeds_per_iteration: int = 16
    validation_seeds: int = 64
    validate_every: int = 5
    lr: float = 5e-3


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TALLY_", env_nested_delimiter="__", extra="ignore")

    runtime_dir: Path = Field(Path(".tally"), description="Datasets, training runs, Redis data, ultralytics settings.")
    token_dir: Path | None = Field(None, description="Durable count-token files; default <runtime_dir>/tokens.")
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = "tally"
    models: list[ModelConfig] = Field(default_factory=lambda: [
        ModelConfig(id="reference", pipeline=str(PIPELINE_PATH), detector=str(DETECTOR_PATH))])
    default_model: str = "reference"

    default_policy: str = Field(DEFAULT_POLICY, pattern="^(" + "|".join(POLICIES) + ")$")
    max_count: int = MAX_COUNT
    max_prompt_length: int = 500
    max_images: int = 8
    default_budget: BudgetLimits = BudgetLimits()
    max_budget: BudgetLimits = BudgetLimits(max_seconds=600.0, max_candidates=1024, max_iterations=500)
    library: LibraryConfig = LibraryConfig()

    result_ttl: int = Field(86_400, description="Seconds images and job records are kept.")
    job_timeout: int = 1_800
    library_timeout: int = 7_200
    job_retries: int = 2
    worker_heartbeat_s: float = 5.0

    @property
    def tokens_path(self) -> Path:
        return self.token_dir or self.runtime_dir / "tokens"

    def model(self, model_id: str | None = None) -> ModelConfig:
        wanted = model_id or self.default_model
        for m in self.models:
            if m.id == wanted:
                return m
        raise KeyError(f"unknown model {wanted!r}; configured: {', '.join(m.id for m in self.models)}")

    def prepare_runtime(self) -> None:
        """Create the runtime dir and keep ultralytics' settings file inside it rather than in $HOME."""
        self.runtime_dir.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("YOLO_CONFIG_DIR", str((self.runtime_dir / "ultralytics").resolve()))
        os.environ.setdefault("YOLO_VERBOSE", "False")


@lru_cache
def get_settings() -> Settings:
    return Settings()
