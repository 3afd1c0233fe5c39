"""``tally report``: one page (HTML and markdown) with figures, from the JSONs ``tally bench`` wrote."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from optimization.errors import InvalidRequest
from tally.benchmarks.report import DEFAULT_FOLDER

from .common import app, console


@app.command("report")
def report(
    out: Annotated[Path, typer.Option(help="Folder for index.html, report.md and the PNGs.")] = Path("out/report"),
    from_: Annotated[Path, typer.Option("--from", help="Folder of the benchmarks' JSONs (`tally bench X --out`).")]
    = DEFAULT_FOLDER,
) -> None:
    """Every benchmark's results (all models) as one page with figures and tables; a benchmark not run yet
    says which command writes it."""
    from tally.benchmarks.report import write_report

    if not from_.is_dir():
        raise InvalidRequest(f"--from: no folder {from_}; `tally bench NAME` writes its JSON into {DEFAULT_FOLDER} "
                             "(or its --out)")
    with console.status(f"rendering the report from {from_}"):
        written = write_report(from_, out)
    found = [s.name for s in written.sections if not s.missing]
    console.print(f"report written to {out / 'index.html'} and {out / 'report.md'} with "
                  f"{len(written.files) - 2} PNGs; results: {', '.join(found) or 'none'}"
                  + (f"; none for: {', '.join(written.missing)}" if written.missing else ""), highlight=False)
