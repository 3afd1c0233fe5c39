"""The worker's logs: one line per record on stderr, JSON by default (``Settings.log_format``), each stamped
with the worker's name and model, and with the job id while a job runs.

The stamp is a filter on the one handler installed on the root logger, so it reaches every library's
records: Tally's, the engine's and RQ's (RQ adds no handler of its own when the root has one, and its
records propagate). The job id lives in a context variable that ``TallyWorker`` sets around each job, so
RQ's own lines about the job (its result, its failure, a retry) carry it too; RQ's announcement of a job
it dequeued comes a moment before, at INFO, which workers do not show.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TextIO

_job_id: ContextVar[str | None] = ContextVar("tally_job_id", default=None)


@contextmanager
def job_context(job_id: str) -> Iterator[None]:
    """Every record emitted inside (in this thread or task) carries ``job_id``."""
    token = _job_id.set(job_id)
    try:
        yield
    finally:
        _job_id.reset(token)


class Stamp(logging.Filter):
    """Adds fixed fields (worker, model) to every record, and ``job_id`` while a job runs."""

    def __init__(self, **fields: str):
        super().__init__()
        self.fields = fields

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in self.fields.items():
            setattr(record, name, value)
        job_id = _job_id.get()
        if job_id is not None and not hasattr(record, "job_id"):  # a record may name its job itself (``extra``)
            record.job_id = job_id
        return True


class TextFormatter(logging.Formatter):
    """Plain lines for a terminal: ``time level logger [worker job] message``."""

    def __init__(self):
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        where = " ".join(str(v) for v in (getattr(record, "worker", None), getattr(record, "job_id", None)) if v)
        return line.replace(f" {record.name} ", f" {record.name} [{where}] ", 1) if where else line


def json_formatter() -> logging.Formatter:
    from pythonjsonlogger.json import JsonFormatter

    return JsonFormatter("{levelname}{name}{message}", style="{", timestamp="time",
                         rename_fields={"levelname": "level", "name": "logger"})


def install(log_format: str, level: int = logging.INFO, stream: TextIO | None = None, **fields: str) -> logging.Handler:
    """Route every record to ``stream`` (default stderr) as JSON or text lines stamped with ``fields``
    (e.g. worker, model); returns the handler for ``uninstall``."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(json_formatter() if log_format == "json" else TextFormatter())
    handler.addFilter(Stamp(**fields))
    root = logging.getLogger()
    handler.previous_level = root.level  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    return handler


def uninstall(handler: logging.Handler) -> None:
    """Leave logging as ``install`` found it (for callers in a longer-lived process, e.g. tests)."""
    root = logging.getLogger()
    root.removeHandler(handler)
    root.setLevel(getattr(handler, "previous_level", root.level))


def quiet_model_loading() -> None:
    """No loading bars or chatter from diffusers and transformers (the CLI's own bars and the worker's JSON log
    lines would be buried or broken by them)."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    for lib in (diffusers_logging, transformers_logging):
        lib.disable_progress_bar()
        lib.set_verbosity_error()
