"""Fixtures shared by all tests: offline, a runtime dir per session, the shipped reference models."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_RUNTIME = Path(os.environ.get("TALLY_TEST_RUNTIME", "/tmp/tally-test-runtime"))
# Any hub download must fail loudly; ultralytics must not write settings into $HOME.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["YOLO_OFFLINE"] = "1"
os.environ["TALLY_RUNTIME_DIR"] = str(_RUNTIME)
os.environ["YOLO_CONFIG_DIR"] = str(_RUNTIME / "ultralytics")
_RUNTIME.mkdir(parents=True, exist_ok=True)


@pytest.fixture(scope="session")
def counter():
    from optimization.counter import YoloCounter
    from optimization.reference import DETECTOR_PATH

    return YoloCounter(DETECTOR_PATH)


@pytest.fixture(scope="session")
def t2i():
    from optimization.pipelines import TextToImage
    from optimization.reference import PIPELINE_PATH

    return TextToImage.load(PIPELINE_PATH)


@pytest.fixture
def tally_cli(tmp_path):
    """Runs the installed ``tally`` command in a subprocess; returns the CompletedProcess."""
    import subprocess

    def run(*args: str, timeout: float = 600):
        env = {**os.environ, "TALLY_RUNTIME_DIR": str(tmp_path / "runtime")}
        exe = Path(sys.executable).with_name("tally")
        return subprocess.run([str(exe), *args], capture_output=True, text=True, env=env, timeout=timeout, cwd=tmp_path)

    return run
