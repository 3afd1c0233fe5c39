"""``tally up``, ``tally worker`` and ``tally submit``: run the service and talk to it."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from optimization.config import Policy
from optimization.errors import InvalidRequest

from .common import JsonOption, app, console, prepare, write_json


@app.command()
def worker(
    model: Annotated[Optional[str], typer.Option(help="Configured model id; default: the default model.")] = None,
    burst: Annotated[bool, typer.Option(help="Exit when the queues are empty.")] = False,
    name: Annotated[Optional[str], typer.Option(help="Worker name (unique per host).")] = None,
) -> None:
    """Load one model's pipeline and detector once and serve its queues (user jobs before library tasks)."""
    from workers.runtime.process import run_worker

    settings = prepare()
    settings.model(model)  # an unknown id is one line before anything loads

    def ready(runtime, reseeded: int) -> None:  # a log record: the worker's log is JSON lines (TALLY_LOG_FORMAT)
        logging.getLogger("tally.worker").info(
            "worker ready: model %s (%s), %d tokens re-seeded from %s", runtime.model.id,
            runtime.engine.t2i.fingerprint, reseeded, settings.store or settings.tokens_path)

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
    with Launcher(settings, env=env) as launcher:
        launcher.ensure_redis()
        launcher.start_api(host, port, workers=api_workers or settings.api_workers)
        for model_id in models:
            for i in range(workers_per_model):
                launcher.start_worker(model_id, f"{model_id}-{i}")
        missing |= launcher.wait_ready(f"http://{host}:{port}", timeout=300, models=models if workers_per_model else None,
                                       all_or_nothing=all_or_nothing)
        for model_id, why in missing.items():
            console.print(f"[yellow]not serving model {model_id}[/]: {why}")
        console.print(f"Tally is up: http://{host}:{port}/ (the page; the API reference at /docs)  Ctrl-C stops it")
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
        launcher.supervise()


URL_OPTION = Annotated[str, typer.Option(envvar="TALLY_URL", help="The API.")]
KEY_OPTION = Annotated[Optional[str], typer.Option(envvar="TALLY_API_KEY", show_default=False,
                                                    help="Sent as Authorization: Bearer.")]


@app.command()
def submit(
    prompt: Annotated[str, typer.Option(help="What to draw.")],
    count: Annotated[int, typer.Option(help="How many objects.")],
    model: Annotated[Optional[str], typer.Option(help="A configured model id; default: the server's.")] = None,
    policy: Annotated[Optional[Policy], typer.Option(help="Default: the server's, per model.")] = None,
    budget_seconds: Annotated[Optional[float], typer.Option(help="Engine seconds; default: the server's.")] = None,
    budget_candidates: Annotated[Optional[int], typer.Option(help="Candidate images; default: the server's.")] = None,
    budget_iterations: Annotated[Optional[int], typer.Option(help="Refinements; default: the server's.")] = None,
    object_: Annotated[Optional[str], typer.Option("--object", help="Object to count; default: the prompt's.")] = None,
    num_images: Annotated[int, typer.Option(help="Verified images wanted.")] = 1,
    seed: Optional[int] = None,
    url: URL_OPTION = "http://127.0.0.1:8000",
    api_key: KEY_OPTION = None,
    queue_if_offline: Annotated[bool, typer.Option(
        "--queue-if-offline", help="Queue even if no worker serves the model now (else error no_worker).")] = False,
    detach: Annotated[bool, typer.Option("--detach", help="Print the job id and links, don't follow.")] = False,
    out: Annotated[Optional[Path], typer.Option(
        help="Folder to save each image into: <job>-<n>.png and <job>-<n>-boxes.png (detections drawn).")] = None,
    json_path: JsonOption = None,
) -> None:
    """Submit a job to a running service and follow its progress (Server-Sent Events) until it ends."""
    from tally.client import Client, ClientError

    budget = {"max_seconds": budget_seconds, "max_candidates": budget_candidates, "max_iterations": budget_iterations}
    with Client(url, api_key=api_key) as client:
        try:
            accepted = client.submit(prompt, count, object=object_, num_images=num_images, seed=seed, model=model,
                                     policy=policy, budget=budget, queue_if_offline=queue_if_offline)
        except ClientError as exc:
            if exc.code == "no_worker":
                raise type(exc)(f"{exc.message} (tally submit --queue-if-offline)", exc.code, exc.status) from None
            raise
        job_id = accepted.id
        if detach:
            console.print(f"job {job_id} {accepted.status}", highlight=False)
            for name, link in accepted.links.model_dump().items():
                console.print(f"  {name}: {client.absolute(link)}", highlight=False, soft_wrap=True)
            if json_path is None or str(json_path) != "-":
                print(job_id)  # stdout: the id alone, for scripts
            write_json(accepted.model_dump(mode="json"), json_path)
            return
        console.print(f"job {job_id} queued", highlight=False)
        _report(client, _follow(client, job_id, num_images), out, json_path)


class JobUnsuccessful(InvalidRequest):
    """The job ended failed or canceled (exit status 3: the request was fine, the job was not)."""

    exit_status = 3


def _report(client, final, out: Optional[Path], json_path) -> None:
    """What ``submit`` and ``get`` print of a job: warnings, each image with its counts and why it is not
    verified, the cost; the images saved into ``out`` as <job>-<n>.png and <job>-<n>-boxes.png."""
    from workers.statuses import TERMINAL

    write_json(final.model_dump(mode="json"), json_path)
    for warning in final.warnings:
        console.print(f"[yellow]warning:[/] {escape(warning)}")
    if final.status not in TERMINAL:
        console.print(f"job {final.id} {final.status}"
                      + (f", queue position {final.queue_position}" if final.queue_position is not None else ""),
                      highlight=False)
        return
    if final.status != "succeeded":
        raise JobUnsuccessful(f"{final.error.code}: {final.error.message}" if final.error
                              else f"job {final.id} ended {final.status}")
    for r in final.results:
        console.print(f"image {r.index}: seed {r.seed}, {describe_counts(r, final.object)}, "
                      f"{'verified' if r.verified else 'not verified: ' + (r.reason or '').replace('_', ' ')}  "
                      f"{client.absolute(r.url)}", highlight=False, soft_wrap=True)
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            (out / f"{final.id}-{r.index}.png").write_bytes(client.image(final.id, r.index))
            (out / f"{final.id}-{r.index}-boxes.png").write_bytes(client.image(final.id, r.index, boxes=True))
    if out is not None and final.results:
        console.print(f"images saved in {out}")
    console.print(f"status: {final.status}; cost: {describe_cost(final.cost)}", highlight=False)


def describe_cost(cost) -> str:
    """"9 candidates, 2 iterations, 12.4 s (sampling 10.1 s, optimizing 2.3 s)"."""
    if cost is None:
        return "none"
    from optimization.prompts import plural

    def n(k: int, word: str) -> str:
        return f"{k} {word if k == 1 else plural(word)}"

    stages = [f"{name} {s:.1f} s" for name, s in (("sampling", cost.sampling_seconds),
                                                   ("optimizing", cost.optimizing_seconds)) if s is not None]
    return (f"{n(cost.candidates, 'candidate')}, {n(cost.iterations, 'iteration')}, {cost.seconds:.1f} s"
            + (f" ({', '.join(stages)})" if stages else ""))


def describe_counts(result, object_: str) -> str:
    """"7 circles detected (1 ambiguous, 1 unclear, cross-check 8)": the confident count and the doubt beside it."""
    from optimization.prompts import plural

    noun = object_ if result.detected_count == 1 else plural(object_)
    doubt = [f"{n} {name}" for name, n in (("ambiguous", result.ambiguous), ("unclear", result.unclear),
                                           ("other", result.other_class)) if n]
    if result.crosscheck_count is not None and result.crosscheck_count != result.detected_count:
        doubt.append(f"cross-check {result.crosscheck_count}")
    return f"{result.detected_count} {noun} detected" + (f" ({', '.join(doubt)})" if doubt else "")


def _follow(client, job_id: str, num_images: int):
    """Wait for the job with a rich progress bar: verified images of those asked for, and what the engine is
    doing (queued, stage, candidates, refinement iteration and its detected counts)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("[bold]verified"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.fields[state]}"), console=console) as bar:
        task = bar.add_task("job", total=num_images, state="queued")

        def on_progress(event) -> None:
            state = event.status if event.stage is None else f"{event.status}: {event.stage}"
            if event.progress is not None:
                p = event.progress
                state += f", {p.candidates} candidates"
                if p.iterations:
                    state += f", iteration {p.iterations} counts {p.detected_counts} loss {p.loss:.3g}" \
                        if p.loss is not None else f", iteration {p.iterations}"
                bar.update(task, completed=p.images_verified)
            bar.update(task, state=state)

        final = client.wait(job_id, on_progress)
        bar.update(task, completed=sum(r.verified for r in final.results), state=final.status)
    return final


@app.command()
def jobs(
    status: Annotated[Optional[str], typer.Option(help="Only jobs in this status (queued, running, succeeded, "
                                                       "failed, canceled).")] = None,
    limit: Annotated[int, typer.Option(min=1, max=100)] = 20,
    url: URL_OPTION = "http://127.0.0.1:8000",
    api_key: KEY_OPTION = None,
    json_path: JsonOption = None,
) -> None:
    """The key's jobs, newest first: id, status, model, count, verified images, prompt."""
    from rich.table import Table

    from tally.client import Client

    with Client(url, api_key=api_key) as client:
        found = client.jobs(status=status, limit=limit)
    write_json(found.model_dump(mode="json"), json_path)
    table = Table("status", "model", "count", "verified", "prompt")
    table.add_column("id", no_wrap=True)  # last: a terminal too narrow cuts the prompt, never the id
    for job in found.jobs:
        verified = sum(r.verified for r in job.results)
        table.add_row(job.status, job.model, str(job.count), f"{verified}/{job.num_images}",
                      escape(job.prompt or ""), job.id)
    console.print(table)


@app.command()
def get(
    job_id: Annotated[str, typer.Argument(help="The job's id (tally submit --detach prints it).")],
    wait: Annotated[bool, typer.Option("--wait", help="Follow the job until it ends.")] = False,
    out: Annotated[Optional[Path], typer.Option(help="Folder to save the images into, named as tally submit "
                                                     "names them.")] = None,
    url: URL_OPTION = "http://127.0.0.1:8000",
    api_key: KEY_OPTION = None,
    json_path: JsonOption = None,
) -> None:
    """A job's record (a detached one, say): its images with their counts, and them saved with --out."""
    from tally.client import Client
    from workers.statuses import TERMINAL

    with Client(url, api_key=api_key) as client:
        job = client.get(job_id)
        if wait and job.status not in TERMINAL:
            job = _follow(client, job_id, job.num_images)
        _report(client, job, out, json_path)


@app.command()
def cancel(
    job_id: Annotated[str, typer.Argument(help="The job's id.")],
    url: URL_OPTION = "http://127.0.0.1:8000",
    api_key: KEY_OPTION = None,
) -> None:
    """Cancel a job: a queued one never runs, a running one stops within one iteration."""
    from tally.client import Client

    with Client(url, api_key=api_key) as client:
        job = client.cancel(job_id)
    console.print(f"job {job.id} {job.status}" + (" (cancel requested)" if job.cancel_requested
                                                  and job.status == "running" else ""), highlight=False)
