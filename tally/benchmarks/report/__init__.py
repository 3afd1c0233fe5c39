"""``tally report``: one page (HTML and markdown) from the JSONs ``tally bench`` wrote, its figures as PNGs
beside it.

Every benchmark is a section, every figure comes with the table of its numbers, and a benchmark without a
JSON says which command writes one. ``tally bench NAME`` writes ``NAME.json`` for the default model and
``NAME-MODEL.json`` for another (``result_path``); the report reads them all. Fields are read with care: a
JSON from an older run that lacks some shows what it has.
"""

from __future__ import annotations

from pathlib import Path

from .model import BENCHMARKS, DEFAULT_FOLDER, Report, Section, fmt, load_results, result_path
from .render import render_html, render_markdown
from .sections import BUILDERS, copy_pictures, modified

__all__ = ["BENCHMARKS", "DEFAULT_FOLDER", "build_report", "fmt", "load_results", "result_path", "write_report"]


def build_report(folder: Path, out: Path) -> Report:
    """Read every benchmark's JSONs in ``folder`` and write the figures (and copies of the benchmarks' own
    pictures) into ``out``; the pages are rendered from the returned report."""
    out.mkdir(parents=True, exist_ok=True)
    sections = []
    for name, benchmark in BENCHMARKS.items():
        results, problems = load_results(folder, name)
        section = Section(name, benchmark, problems=problems)
        if not results:
            section.missing = str(result_path(folder, name))
            section.unreadable = bool(problems)
            section.command = benchmark.command + ("" if folder == DEFAULT_FOLDER else f" --out {folder}")
        else:
            section.sources = [(str(r.path), modified(r.path)) for r in results]
            BUILDERS[name](section, results, out)
            copy_pictures(section, results, folder, out)
        sections.append(section)
    files = [out / f.file for s in sections for f in s.figures + s.pictures]
    return Report(folder, out, sections, files)


def write_report(folder: Path, out: Path) -> Report:
    """Figures, ``index.html`` and ``report.md`` in ``out`` from the JSONs in ``folder``."""
    report = build_report(folder, out)
    (out / "index.html").write_text(render_html(report))
    (out / "report.md").write_text(render_markdown(report))
    report.files = [out / "index.html", out / "report.md", *report.files]
    return report
