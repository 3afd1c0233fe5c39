"""Starts and stops the service's processes (Redis if none answers, the API, workers): ``tally up``, the
end-to-end tests and ``tally bench service`` share it. Everything it started, it stops: on Ctrl-C or
SIGTERM each child gets SIGTERM (workers put their running job back in its queue), and if the launcher is
killed outright its children get SIGTERM from the kernel (Linux ``PR_SET_PDEATHSIG``) instead of lingering
on the port. ``supervise`` restarts a child that dies, with backoff, and says why in the log."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import ctypes
import logging

import httpx
import redis

from workers.settings import Settings


log = logging.getLogger("tally.launcher")
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the launcher dies, however it dies (Linux only)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


class Launcher:
    def __init__(self, settings: Settings, env: dict | None = None, log_dir: Path | None = None):
        self.settings = settings
        self.env = {**os.environ, **(env or {})}
        self.log_dir = Path(log_dir or settings.runtime_dir / "logs")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.processes: dict[str, subprocess.Popen] = {}
        self.argv: dict[str, list[str]] = {}
        self.worker_models: dict[str, str] = {}  # process name -> the model its worker serves

    def __enter__(self) -> "Launcher":
        return self

    def __exit__(self, *exc) -> None:
        self.stop_all()

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        output = open(self.log_dir / f"{name}.log", "ab")
        proc = subprocess.Popen(argv, stdout=output, stderr=subprocess.STDOUT, env=self.env, start_new_session=True,
                                preexec_fn=_die_with_parent)
        self.processes[name], self.argv[name] = proc, argv
        return proc

    def redis_answers(self) -> bool:
        try:
            return bool(redis.Redis.from_url(self.settings.redis_url, socket_connect_timeout=1).ping())
        except redis.RedisError:
            return False

    def ensure_redis(self) -> None:
        if self.redis_answers():
            return
        server = shutil.which("redis-server")
        if server is None:
            raise RuntimeError(f"no Redis answers at {self.settings.redis_url} and redis-server is not installed")
        url = urllib.parse.urlparse(self.settings.redis_url)
        data = (self.settings.runtime_dir / "redis").resolve()
        data.mkdir(parents=True, exist_ok=True)
        self._spawn("redis", [server, "--bind", "127.0.0.1", "--port", str(url.port or 6379), "--dir", str(data),
                              "--appendonly", "yes", "--save", ""])
        self._wait(self.redis_answers, 10, "redis-server did not start")

    def start_api(self, host: str, port: int, workers: int = 1) -> subprocess.Popen:
        """uvicorn with ``workers`` processes on one port, uvloop's event loop and httptools' parser (uvicorn's
        fast pair), no access log (a line per request costs more than a status read)."""
        return self._spawn("api", [sys.executable, "-m", "uvicorn", "--factory", "service.app:app", "--host", host,
                                   "--port", str(port), "--log-level", "warning", "--workers", str(workers),
                                   "--loop", "uvloop", "--http", "httptools", "--no-access-log"])

    def start_worker(self, model_id: str, name: str) -> subprocess.Popen:
        tally = str(Path(sys.executable).with_name("tally"))
        self.worker_models[f"worker-{name}"] = model_id
        return self._spawn(f"worker-{name}", [tally, "worker", "--model", model_id, "--name", name])

    def wait_ready(self, api_url: str, timeout: float = 300, models: list[str] | None = None,
                   all_or_nothing: bool = True) -> dict[str, str]:
        """Until /readyz says ready, or, with ``models``, until each of those has a live worker. A process that
        exits meanwhile stops it all, unless ``all_or_nothing`` is off and it is a worker: then its model is
        given up (its workers stopped) while the others come up. Returns the models given up, with why."""
        waiting, given_up = list(models or []), {}

        def ready() -> bool:
            for name, proc in list(self.processes.items()):
                if proc.poll() is None:
                    continue
                why = f"{name} exited with {proc.returncode}; see {self.log_dir / name}.log"
                model = self.worker_models.get(name)
                if all_or_nothing or model is None or model not in waiting:
                    raise RuntimeError(why)
                given_up[model] = why
                waiting.remove(model)
                for other in [n for n, m in self.worker_models.items() if m == model]:
                    self.stop(other)
            try:
                if models is None:
                    return httpx.get(f"{api_url}/readyz", timeout=2).status_code == 200
                workers = httpx.get(f"{api_url}/readyz", timeout=2).json().get("workers", {})  # needs no key
                return all(workers.get(m, 0) > 0 for m in waiting)
            except httpx.HTTPError:
                return False

        self._wait(ready, timeout, f"the service at {api_url} was not ready within {timeout} s")
        return given_up

    @staticmethod
    def _wait(predicate, timeout: float, message: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.2)
        raise RuntimeError(message)

    def supervise(self, max_backoff: float = 60.0) -> None:
        """Until Ctrl-C or SIGTERM: restart any child that exits, waiting 1, 2, 4 ... s (reset after a
        minute of good health) and logging why, while the others keep serving."""
        backoff = {name: 1.0 for name in self.processes}
        restart_at: dict[str, float] = {}
        started = {name: time.monotonic() for name in self.processes}
        try:
            while True:
                now = time.monotonic()
                for name, proc in list(self.processes.items()):
                    if name in restart_at:
                        if now >= restart_at.pop(name):
                            log.warning("restarting %s", name)
                            self._spawn(name, self.argv[name])
                            started[name] = now
                        continue
                    if proc.poll() is None:
                        if now - started[name] > 60:
                            backoff[name] = 1.0
                        continue
                    delay = backoff[name]
                    log.warning("%s exited with status %s; restarting in %.0f s (log: %s)", name, proc.returncode,
                                delay, self.log_dir / f"{name}.log")
                    restart_at[name] = now + delay
                    backoff[name] = min(delay * 2, max_backoff)
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
        proc = self.processes.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def stop_all(self) -> None:
        for name in [n for n in self.processes if n != "redis"] + (["redis"] if "redis" in self.processes else []):
            self.stop(name)
