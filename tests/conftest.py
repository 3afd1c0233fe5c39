"""Fixtures shared by all tests: offline, a runtime dir per session, the shipped reference models, a
private Redis server, and the ``tally`` command run in this process."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_RUNTIME = Path(os.environ.get("TALLY_TEST_RUNTIME", "/tmp/tally-test-runtime"))
# Any hub download must fail loudly; ultralytics must not write settings into $HOME.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["YOLO_OFFLINE"] = "1"
os.environ["TALLY_AUTH"] = "off"  # tests of keys and scopes ask for "required" explicitly
os.environ["TALLY_RUNTIME_DIR"] = str(_RUNTIME)
os.environ["YOLO_CONFIG_DIR"] = str(_RUNTIME / "ultralytics")
_RUNTIME.mkdir(parents=True, exist_ok=True)


@pytest.fixture(autouse=True)
def _signal_handlers_kept():
    """An RQ worker run in this process installs its own SIGINT/SIGTERM handlers: put pytest's back, so that a
    timeout's SIGTERM still stops the run."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for number, handler in saved.items():
        signal.signal(number, handler)


@pytest.fixture(autouse=True)
def _unit_tests_stay_in_process(request, monkeypatch):
    """The unit tier's rule, enforced: no connection (Redis, HTTP, DNS) and no process."""
    if request.node.get_closest_marker("unit") is None:
        return

    def refuse(*_args, **_kwargs):
        raise AssertionError("a unit test may not open a connection or start a process")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def reference_spec():
    from optimization.reference.models import reference_model

    return reference_model()


@pytest.fixture(scope="session")
def counter(reference_spec):
    from optimization.counter import load_counter

    return load_counter(reference_spec)


@pytest.fixture(scope="session")
def t2i(reference_spec):
    from optimization.pipelines import TextToImage

    return TextToImage.from_spec(reference_spec)


@pytest.fixture(scope="session")
def web_engine():
    from optimization.engine import CountEngine
    from optimization.reference.models import reference_web_model

    return CountEngine.from_spec(reference_web_model())


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """A private redis-server for this test session (never the machine's own)."""
    port = free_port()
    data = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen([shutil.which("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(data)], stdout=subprocess.DEVNULL)
    import redis

    for _ in range(100):
        try:
            redis.Redis(port=port).ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait()


@pytest.fixture
def settings(redis_url, tmp_path):
    """Settings of an API on the session's Redis under a prefix of its own (auth off, as everywhere here)."""
    import uuid

    from workers.settings import Settings

    return Settings(redis_url=redis_url, redis_prefix=f"t{uuid.uuid4().hex[:8]}", runtime_dir=tmp_path / "runtime",
                    token_dir=tmp_path / "tokens")


@pytest.fixture
def api(settings):
    """The API in this process (FastAPI's TestClient)."""
    from fastapi.testclient import TestClient

    from service.app import create_app

    with TestClient(create_app(settings)) as client:
        yield client


@contextmanager
def serve_api(settings):
    """The API under uvicorn in a thread on a free port (a real HTTP server); yields the port."""
    import threading

    import uvicorn

    from service.app import create_app

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the API did not start"
        time.sleep(0.05)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=10)


class JobsOverHttp:
    """A test's view of a running API (``http``, an httpx client): submit a job, read it, wait for it."""

    http: object  # httpx.Client

    def submit(self, **body) -> str:
        response = self.http.post("/v1/jobs", json=body)
        assert response.status_code == 202, response.text
        return response.json()["id"]

    def record(self, job_id: str) -> dict:
        return self.http.get(f"/v1/jobs/{job_id}").json()

    def wait(self, job_id: str, timeout: float = 180, until=("succeeded", "failed", "canceled")) -> dict:
        deadline = time.monotonic() + timeout
        while (record := self.record(job_id))["status"] not in until:
            assert time.monotonic() < deadline, f"job {job_id} is still {record['status']} after {timeout} s"
            time.sleep(0.2)
        return record


@dataclass
class Service(JobsOverHttp):
    """A running service: private Redis, the API (uvicorn) and worker ``w1``, all real processes."""

    url: str
    settings: object  # workers.settings.Settings
    launcher: object  # tally.launcher.Launcher
    redis: object  # redis.Redis
    http: object  # httpx.Client

    def start_worker(self, name: str = "w1") -> None:
        self.launcher.start_worker("reference", name)
        self.launcher.wait_ready(self.url, timeout=180, models=["reference"])

    def restart_worker(self, name: str = "w1") -> None:
        self.launcher.stop(f"worker-{name}")
        self.start_worker(name)


@contextmanager
def launch_service(root: Path, env: dict | None = None, models: list | None = None,
                   workers: dict[str, str] | None = None):
    """Redis, the API and the ``workers`` (name -> model id; default: ``w1`` for the reference model), stopped
    on exit."""
    import httpx
    import redis

    from tally.launcher import Launcher
    from workers.settings import Settings

    redis_url = f"redis://127.0.0.1:{free_port()}/0"
    env = {"TALLY_REDIS_URL": redis_url, "TALLY_RUNTIME_DIR": str(root / "runtime"),
           "TALLY_TOKEN_DIR": str(root / "tokens"), "TALLY_WORKER_HEARTBEAT_S": "1", **(env or {})}
    if models is not None:
        env["TALLY_MODELS"] = json.dumps(models)
    settings = Settings(redis_url=redis_url, runtime_dir=root / "runtime", token_dir=root / "tokens")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with Launcher(settings, env=env, log_dir=root / "logs") as launcher:
        launcher.ensure_redis()
        launcher.start_api("127.0.0.1", port)
        workers = workers or {"w1": "reference"}
        for name, model in workers.items():
            launcher.start_worker(model, name)
        launcher.wait_ready(url, timeout=180, models=sorted(set(workers.values())))
        with httpx.Client(base_url=url, timeout=30) as http:
            yield Service(url, settings, launcher, redis.Redis.from_url(redis_url), http)


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def tally_cli(tmp_path, monkeypatch, capsys, redis_url):
    """Runs ``tally ARGS`` in this process (typer's app through the console entry point's error handling),
    with its own runtime dir and the session's private Redis."""
    from tally.cli import main
    from workers.settings import get_settings

    def run(*args: str, env: dict | None = None) -> CliResult:
        monkeypatch.setenv("TALLY_RUNTIME_DIR", str(tmp_path / "runtime"))
        monkeypatch.setenv("TALLY_REDIS_URL", redis_url)
        for k, v in (env or {}).items():
            monkeypatch.setenv(k, v)
        get_settings.cache_clear()
        capsys.readouterr()
        try:
            main(list(args))
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        finally:
            get_settings.cache_clear()
        out = capsys.readouterr()
        return CliResult(code, out.out, out.err)

    return run


@pytest.fixture
def runtime(redis_url, tmp_path, t2i, counter, reference_spec, monkeypatch):
    """A worker's job runner in this process (the session's models, a private key prefix), for an in-process
    RQ worker."""
    import uuid

    import redis

    from optimization.counter import load_crosscheck
    from optimization.engine import CountEngine
    from workers.runtime import runner
    from workers.settings import Settings
    from workers.tokens import TokenStore

    settings = Settings(redis_url=redis_url, redis_prefix=f"w{uuid.uuid4().hex[:8]}", runtime_dir=tmp_path,
                        token_dir=tmp_path / "tokens")
    connection = redis.Redis.from_url(redis_url)
    engine = CountEngine(t2i, counter, reference_spec, load_crosscheck(reference_spec.crosscheck), settings.refine)
    rt = runner.JobRunner(settings, reference_spec, connection, engine, TokenStore.for_settings(settings, connection))
    monkeypatch.setattr(runner, "_current", rt)
    return rt
