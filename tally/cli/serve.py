"""``tally up``, ``tally worker`` and ``tally submit``: run the service and talk to it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from optimization.config import Policy
from optimization.errors import InvalidRequest

from .common import JsonOption, app, console, prepare, progress_bar, write_json


@app.command()
def worker(
    model: Annotated[Optional[str], typer.Option(help="Configured model id; default: the default model.")] = None,
    burst: Annotated[bool, typer.Option(help="Exit when the queues are empty.")] = False,
    name: Annotated[Optional[str], typer.Option(help="Worker name (unique per host).")] = None,
) -> None:
    """Load one model's pipeline and detector once and serve its queues (user jobs before library tasks)."""
    from workers.worker import run_worker

    settings = prepare()
    settings.model(model)  # an unknown id is one line before anything loads

    def ready(runtime, reseeded: int) -> None:
        console.print(f"worker ready: model {runtime.model.id} ({runtime.engine.t2i.fingerprint}), "
                      f"{reseeded} tokens re-seeded from {settings.tokens_path}")

    run_worker(settings, model, burst=burst, name=name, on_ready=ready)


@app.command()
def up(
    host: str = "127.0.0.1",
    port: int = 8000,
    workers_per_model: Annotated[int, typer.Option(min=0)] = 1,
) -> None:
    """Start Redis (if none answers), the API and a worker per model; Ctrl-C stops what was started."""
    import signal

    from tally.launcher import Launcher

    def interrupt(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)  # `kill` stops what was started, like Ctrl-C
    settings = prepare()
    with Launcher(settings) as launcher:
        launcher.ensure_redis()
        launcher.start_api(host, port)
        for m in settings.models:
            for i in range(workers_per_model):
                launcher.start_worker(m.id, f"{m.id}-{i}")
        launcher.wait_ready(f"http://{host}:{port}", timeout=300)
        console.print(f"Tally is up: http://{host}:{port}/docs  (Ctrl-C stops it)")
        launcher.wait()


@app.command()
def submit(
    prompt: Annotated[str, typer.Option(help="What to draw.")],
    count: Annotated[int, typer.Option(help="How many objects.")],
    url: Annotated[str, typer.Option(help="The API.")] = "http://127.0.0.1:8000",
    object_: Annotated[Optional[str], typer.Option("--object")] = None,
    num_images: int = 1,
    seed: Optional[int] = None,
    policy: Optional[Policy] = None,
    out: Annotated[Optional[Path], typer.Option(help="Folder to download the images into.")] = None,
    json_path: JsonOption = None,
) -> None:
    """Submit a job to a running service and follow its progress (Server-Sent Events) until it ends."""
    import httpx

    from tally.client import follow_job

    body = {"prompt": prompt, "count": count, "object": object_, "num_images": num_images, "seed": seed, "policy": policy}
    with progress_bar("job", num_images) as update:
        final = follow_job(url, {k: v for k, v in body.items() if v is not None},
                           on_event=lambda e: update(e.get("progress", {}).get("images_verified", 0)))
    if final.get("code"):
        raise InvalidRequest(f"{final['code']}: {final['message']}")
    for r in final.get("results", []):
        console.print(f"image {r['index']}: seed {r['seed']}, detected {r['detected_count']} "
                      f"{final.get('object')}(s), {'verified' if r['verified'] else 'NOT verified'}  {r['url']}")
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            (out / f"{final['id']}-{r['index']}.png").write_bytes(httpx.get(r["url"] + "?boxes=true").content)
    console.print(f"status: {final.get('status')}; cost: {final.get('cost')}")
    write_json(final, json_path)
