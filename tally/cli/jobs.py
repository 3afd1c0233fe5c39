"""``tally submit``, ``jobs``, ``get`` and ``cancel``: talk to a running service through the client."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from optimization.config import Policy
from optimization.errors import InvalidRequest

from .common import JsonOption, app, console, write_json


URL_OPTION = Annotated[str, typer.Option(envvar="TALLY_URL", help="The API.")]
KEY_OPTION = Annotated[Optional[str], typer.Option(envvar="TALLY_API_KEY", show_default=False,
                                                    help="Sent as Authorization: Bearer.")]


class JobUnsuccessful(InvalidRequest):
    """The job ended failed or canceled (exit status 3: the request was fine, the job was not)."""

    exit_status = 3


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
    if result.stated_count is not None:  # sampling restated the number (ModelSpec.restate_after)
        doubt.append(f"drawn stating {result.stated_count}")
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
