"""What every command shares: the app, the console, progress bars, ``--json`` output, loading a model by
its configured id, the token store, and the one place where errors become exit statuses."""

from __future__ import annotations

import json
import sys
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from optimization.config import ModelSpec
from optimization.errors import InvalidRequest
from tally.client import ClientError
from workers.logs import quiet_model_loading  # noqa: F401 - the CLI's commands load models too
from workers.settings import Settings, get_settings

app = typer.Typer(help="Tally: text-to-image with the exact number of objects.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
console = Console(stderr=True)


def _settings_or_exit() -> Settings:
    """The settings; an invalid environment (``TALLY_*``) is one line naming each problem, exit status 2."""
    try:
        return get_settings()
    except ValidationError as exc:
        problems = "; ".join(f"TALLY_{'__'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors())
        console.print(f"[red]error:[/red] invalid configuration: {escape(problems)}", highlight=False, soft_wrap=True)
        raise SystemExit(2) from None


# The defaults every command shows in --help: the same settings the API and the workers read.
DEFAULTS = _settings_or_exit()

JsonOption = Annotated[Optional[Path], typer.Option("--json", help="Write the result here ('-' for stdout).")]
ModelOption = Annotated[Optional[str], typer.Option(
    help="A configured model id, as `model` in the API (default: the default model). A pipeline folder or "
         "hub id runs as an ad-hoc model with the default model's settings.")]
DetectorOption = Annotated[Optional[str], typer.Option(help="Detector weights; default: the model's.")]


@contextmanager
def progress_bar(description: str, total: int | None = None):
    """A rich progress bar; yields ``update(done, total)``."""
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False) as bar:
        task = bar.add_task(description, total=total)

        def update(done: int, total: int | None = None) -> None:
            bar.update(task, completed=done, total=total)  # rich keeps the total when given None

        yield update


def write_json(payload: dict, *paths: Optional[Path]) -> None:
    """The result at each path given ('-' is stdout; None is skipped; a path given twice is written once):
    benchmarks pass their default file and ``--json`` both."""
    written: set[Path] = set()
    for path in paths:
        if path is None:
            continue
        if str(path) == "-":
            sys.stdout.write(json.dumps(payload, indent=2) + "\n")
            continue
        if path.resolve() in written:
            continue
        written.add(path.resolve())
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=2) + "\n")
        console.print(f"JSON written to {path}")


def prepare() -> Settings:
    settings = get_settings()
    settings.prepare_runtime()
    return settings


def model_spec(model: Optional[str], detector: Optional[str] = None) -> ModelSpec:
    """A configured model by id, or a pipeline folder / hub id as an ad-hoc model; checked before loading."""
    settings = prepare()
    if model is None or model in {m.id for m in settings.models}:
        spec = settings.model(model)
    else:
        if model.startswith((".", "/", "~")) and not Path(model).expanduser().is_dir():
            raise InvalidRequest(f"--model: no configured model and no pipeline folder {model!r}; configured: "
                                 f"{', '.join(m.id for m in settings.models)}")
        from optimization.reference import REFERENCE_CONFIG, shipped_fields
        from optimization.reference.models import reference_model

        update = {"id": "adhoc", "pipeline": model, "crosscheck": None}
        folder = Path(model).expanduser()
        if (folder / REFERENCE_CONFIG).is_file():  # a reference-world folder carries its own sampler (reference-web's)
            # ... and draws this world's shapes, which its cross-check can judge
            update.update(shipped_fields(folder), crosscheck=reference_model().crosscheck)
        try:  # validated, not copied: the folder's file may hold a sampler no model entry would pass
            spec = ModelSpec.model_validate({**settings.model().model_dump(), **update})
        except ValidationError as exc:
            raise InvalidRequest(f"--model {model}: {REFERENCE_CONFIG}: "
                                 + "; ".join(e["msg"] for e in exc.errors())) from None
    if detector is not None:
        spec = spec.model_copy(update={"detector": detector})
    if not Path(spec.detector).expanduser().is_file():
        raise InvalidRequest(f"detector weights not found: {spec.detector}")
    return spec


def load_engine(spec: ModelSpec):
    from optimization.engine import CountEngine

    quiet_model_loading()
    with console.status(f"loading model {spec.id}"):
        return CountEngine.from_spec(spec, refine_config=get_settings().refine, noise_config=get_settings().noise)


def token_store():
    """The token library the service uses; without Redis, its folder alone."""
    from workers.queue import connect
    from workers.tokens import TokenStore

    settings = prepare()
    return TokenStore.for_settings(settings, connect(settings), redis_optional=True)


def main(argv: list[str] | None = None) -> None:
    """Console entry point. Every error is one line on stderr; the exit status says what kind: 2 bad input,
    3 a job that ended without success, 69 the API unreachable or unavailable, 75 rate limited, 77 no valid
    key for this, 1 a bug (its traceback written to a file the line names)."""
    try:
        code = app(args=argv, prog_name="tally", standalone_mode=False)
    except (InvalidRequest, ClientError) as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise SystemExit(getattr(exc, "exit_status", 2)) from None
    except typer.Abort:
        raise SystemExit(130) from None
    except typer.TyperException as exc:  # the command line's own usage errors (exit status 2)
        console.print(f"[red]error:[/red] {escape(exc.format_message())}", highlight=False, soft_wrap=True)
        raise SystemExit(exc.exit_code) from None
    except (SystemExit, KeyboardInterrupt):
        raise
    except Exception as exc:
        logs = get_settings().runtime_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        path = (logs / f"tally-error-{time.strftime('%Y%m%d-%H%M%S')}.log").resolve()
        path.write_text(traceback.format_exc())
        console.print(f"[red]internal error:[/red] {escape(type(exc).__name__)}: {escape(str(exc))} "
                      f"(traceback in {path})", highlight=False, soft_wrap=True)
        raise SystemExit(1) from None
    raise SystemExit(code if isinstance(code, int) else 0)
