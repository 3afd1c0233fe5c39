"""``tally up`` and ``tally worker``: run the service (``jobs`` talks to it)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from optimization.errors import InvalidRequest

from .common import app, console, prepare


@app.command()
def worker(
    model: Annotated[Optional[str], typer.Option(help="Configured model id; default: the default model.")] = None,
    burst: Annotated[bool, typer.Option(help="Exit when the queues are empty.")] = False,
    name: Annotated[Optional[str], typer.Option(help="Worker name (unique per host).")] = None,
) -> None:
    """Load one model's pipeline and detector once and serve its queues (user jobs before library tasks)."""
    # Before torch loads (OpenMP reads it once): threads that spin while they wait thrash when two busy workers
    # share the cores. Measured on 2 cores, a reference job beside another worker's took 0.74-17.6 s, and 0.48 s
    # with passive waiting (0.27 s alone, 0.31 s passive alone). A value in the environment wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from workers.runtime.process import run_worker

    settings = prepare()
    settings.model(model)  # an unknown id is one line before anything loads

    def ready(runtime, reseeded: int) -> None:  # a log record: the worker's log is JSON lines (TALLY_LOG_FORMAT)
        import torch

        logging.getLogger("tally.worker").info(
            "worker ready: model %s (%s), %d tokens re-seeded from %s", runtime.model.id,
            runtime.engine.t2i.fingerprint, reseeded, settings.store or settings.tokens_path,
            extra={"torch_threads": torch.get_num_threads(), "omp_wait_policy": os.environ["OMP_WAIT_POLICY"]})

    run_worker(settings, model, burst=burst, name=name, on_ready=ready)


def missing_weights(model) -> str | None:
    """Why a model's weights cannot be loaded, where that shows without loading them (local paths)."""
    pipeline, detector = Path(model.pipeline).expanduser(), Path(model.detector).expanduser()
    if model.pipeline.startswith((".", "/", "~")) and not (pipeline / "model_index.json").is_file():
        return f"no diffusers pipeline at {pipeline} (model_index.json missing)"
    if model.detector.startswith((".", "/", "~")) and not detector.is_file():
        return f"no detector weights at {detector}"
    return None


def _loopback(host: str) -> bool:
    import ipaddress

    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _first_admin_key(settings) -> None:
    """With keys required and none yet, the first start creates an admin key and shows it this once."""
    from workers.auth import KeyStore
    from workers.queue import connect

    store = KeyStore(connect(settings), settings)
    if not store.list():
        secret, record = store.create("first-admin", "admin")
        console.print(f"created admin key {record.id} (shown only now; `tally keys create` makes more):")
        console.print(secret, highlight=False, soft_wrap=True)


@app.command()
def up(
    host: str = "127.0.0.1",
    port: int = 8000,
    workers_per_model: Annotated[int, typer.Option(min=0)] = 1,
    api_workers: Annotated[Optional[int], typer.Option(
        min=1, show_default=False, help="API processes on the port; default: TALLY_API_WORKERS (2).")] = None,
    all_or_nothing: Annotated[bool, typer.Option(
        help="Refuse to start unless every model can be served; default: serve those that can, report the rest.")] = False,
) -> None:
    """Start Redis (if none answers), the API and a worker per model, and keep them up (a process that dies
    is restarted with backoff); Ctrl-C or SIGTERM stops what was started within seconds, putting running
    jobs back in their queues. A model whose weights are missing, or whose worker cannot start, is reported
    and left out (its jobs are refused, or fail with no_worker), unless ``--all-or-nothing``."""
    import logging
    import signal

    from tally.launcher import Launcher

    def interrupt(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)  # `kill` stops what was started, like Ctrl-C
    settings = prepare()
    env = {}
    if "TALLY_AUTH" not in os.environ:  # loopback development needs no key; anything else does
        env["TALLY_AUTH"] = "off" if _loopback(host) else "required"
    if env.get("TALLY_AUTH", settings.auth) == "required":
        _first_admin_key(settings)
    else:
        console.print("auth off (loopback development): set TALLY_AUTH=required to require API keys")
    missing = {m.id: why for m in settings.models if (why := missing_weights(m))}
    if missing and (all_or_nothing or len(missing) == len(settings.models)):
        raise InvalidRequest("; ".join(f"model {m}: {why}" for m, why in missing.items()))
    models = [m.id for m in settings.models if m.id not in missing]

    def not_serving(models: dict[str, str]) -> None:
        for model_id, why in models.items():
            console.print(f"[yellow]not serving model {model_id}[/]: {why}")

    not_serving(missing)  # said before the wait, so an interrupted start still says it
    with Launcher(settings, env=env) as launcher:
        launcher.ensure_redis()
        launcher.start_api(host, port, workers=api_workers or settings.api_workers)
        for model_id in models:
            for i in range(workers_per_model):
                launcher.start_worker(model_id, f"{model_id}-{i}")
        not_serving(launcher.wait_ready(f"http://{host}:{port}", timeout=300,
                                        models=models if workers_per_model else None, all_or_nothing=all_or_nothing))
        console.print(f"Tally is up: http://{host}:{port}/ (the page; the API reference at /docs)  Ctrl-C stops it")
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
        launcher.supervise()
