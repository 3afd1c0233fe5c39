"""What the report holds: the benchmarks it knows, their results read from JSON, and the page's sections,
figures and tables."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..plots import Panel, plot_panels

DEFAULT_FOLDER = Path("out/bench")


@dataclass(frozen=True)
class Benchmark:
    title: str
    command: str  # the command that writes its JSON
    about: str


BENCHMARKS = {
    "detector": Benchmark("Detector", "tally bench detector",
                          "Exact count of the detector on fresh rendered scenes, clean and degraded like generations."),
    "base": Benchmark("Base pipeline", "tally bench base",
                      "Count accuracy of each model's base pipeline (no count token), counted by the detector."),
    "engine": Benchmark("Policies", "tally bench engine --quick",
                        "Every policy on the same jobs at the same budget: exact images by count, verified within "
                        "the budget, seconds per verified image."),
    "optimize": Benchmark("Library tokens and refinement", "tally bench optimize --quick",
                          "Library tokens against the base prompt on held-out seeds (never used in learning or "
                          "validation); refinement on near-miss seeds."),
    "iteration": Benchmark("Optimization iteration", "tally bench iteration",
                           "Seconds per optimization iteration against its floor, one forward and backward of the "
                           "same generation."),
    "service": Benchmark("Service", "tally bench service",
                         "Latency and throughput of the service (private Redis, API and worker): library hits "
                         "against direct engine calls, submissions and status reads under load, user jobs "
                         "waiting behind library learning."),
    "faults": Benchmark("Faults and abuse", "tally bench faults",
                        "Worker kills, SIGTERM, a Redis restart, cross-key access, a flooding key and a fuzzed "
                        "API, each on private processes."),
    "demo": Benchmark("The demo's requests", "tally bench demo",
                      "The two count-7 requests of ./scripts/demo, each sent ten times with seeds the server chose, "
                      "through a private service: jobs and images verified, false verified by the cross-check."),
}


def result_path(folder: Path, name: str, model: str | None = None) -> Path:
    """Where ``tally bench NAME`` keeps its result: ``NAME.json`` for the default model (``model`` None),
    ``NAME-MODEL.json`` for another."""
    return folder / (f"{name}-{slug(model)}.json" if model else f"{name}.json")


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


# --- loading -------------------------------------------------------------------------------------------

@dataclass
class Result:
    label: str  # the model it ran on; "" when the benchmark has none (service, faults)
    path: Path
    data: dict


def load_results(folder: Path, name: str) -> tuple[list[Result], list[str]]:
    """Every result of one benchmark in the folder (all models), and a line for each file it cannot read."""
    results, problems = [], []
    for path in sorted(folder.glob(f"{name}*.json")):
        if path.stem == name:
            model = ""
        elif path.stem.startswith(f"{name}-"):
            model = path.stem.removeprefix(f"{name}-")
        else:
            continue
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            problems.append(f"{path}: not readable as JSON ({exc})")
            continue
        if not isinstance(data, dict):
            problems.append(f"{path}: not a benchmark result (a JSON object)")
            continue
        label = str(data.get("model") or model)
        if label in {r.label for r in results}:
            label = path.stem  # the same model twice (a copy under another name): keep both apart
        results.append(Result(label, path, data))
    return results, problems


# --- what the page holds -------------------------------------------------------------------------------

@dataclass
class Table:
    columns: list[str]
    rows: list[list]  # raw values; ``fmt`` formats them on the page
    caption: str = ""

    def numeric(self, column: int) -> bool:
        """Whether a column holds numbers only (aligned right)."""
        values = [row[column] for row in self.rows if row[column] is not None]
        return bool(values) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


@dataclass
class Figure:
    file: str  # a PNG beside the page
    caption: str
    table: Table | None = None


@dataclass
class Section:
    name: str
    benchmark: Benchmark
    missing: str = ""  # the JSON the section lacks ("" when it has results)
    unreadable: bool = False  # the JSON is there but could not be read (see problems)
    command: str = ""  # the command that writes it
    sources: list[tuple[str, str]] = field(default_factory=list)  # (JSON read, when it was written)
    notes: list[str] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    pictures: list[Figure] = field(default_factory=list)  # pictures the benchmark drew itself
    problems: list[str] = field(default_factory=list)

    def figure(self, out: Path, file: str, caption: str, panels: list[Panel], title: str, table: Table) -> None:
        """A figure of the panels that have data, with its table; the table alone when none has."""
        panels = [p for p in panels if p.has_data()]
        if not panels:
            self.tables.append(table)
            return
        plot_panels(panels, out / file, title)
        self.figures.append(Figure(file, caption, table))


@dataclass
class Report:
    folder: Path
    out: Path
    sections: list[Section]
    files: list[Path]  # what was written: the pages and every PNG

    @property
    def missing(self) -> list[str]:
        return [s.name for s in self.sections if s.missing]


def fmt(value) -> str:
    """A table cell: None as a dash, rates and seconds to 4 significant digits, large numbers with commas."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return str(value)
