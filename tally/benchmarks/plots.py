"""Plots for people (matplotlib stays out of ``optimization``): accuracy per count, and the report's panels."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


def plot_per_count(per_count: dict[str, dict], path: Path, title: str) -> None:
    """Exact accuracy and mean detected count (or MAE) against the requested count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = sorted(per_count, key=int)
    xs = [int(c) for c in counts]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.bar(xs, [per_count[c]["exact"] for c in counts], color="#3b7dd8")
    ax1.set(xlabel="requested count", ylabel="exact-count accuracy", ylim=(0, 1), title="exact accuracy")
    if "mean_detected" in per_count[counts[0]]:
        ax2.plot(xs, [per_count[c]["mean_detected"] for c in counts], "o-", label="mean detected")
        ax2.plot(xs, xs, "--", color="grey", label="requested")
        ax2.set(xlabel="requested count", ylabel="detected count", title="mean detected count")
        ax2.legend()
    else:
        ax2.bar(xs, [per_count[c]["mae"] for c in counts], color="#d8793b")
        ax2.set(xlabel="count", ylabel="MAE", title="mean absolute error")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


@dataclass
class Panel:
    """One chart of a figure: ``series`` maps a label (a model, a policy) to its values by x, where x is a
    count (``kind="line"``, x sorted as numbers) or a category (``kind="bar"``, grouped bars in the order x
    first appears). Missing (None) values are left out."""

    title: str
    ylabel: str
    series: dict[str, dict[str, float | None]]
    kind: str = "line"
    xlabel: str = ""
    ylim: tuple[float, float] | None = None

    def has_data(self) -> bool:
        return any(v is not None for values in self.series.values() for v in values.values())


def plot_panels(panels: list[Panel], path: Path, title: str) -> None:
    """The panels side by side (three to a row), one PNG; ``title`` above them when there are several."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    columns = min(3, len(panels))
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 3.9 * rows), squeeze=False)
    for ax, panel in zip(axes.flat, panels):
        if panel.kind == "line":
            _line(ax, panel)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        else:
            _bars(ax, panel)
        ax.set(title=panel.title, ylabel=panel.ylabel, xlabel=panel.xlabel)
        if panel.ylim:
            ax.set_ylim(*panel.ylim)
        if len(panel.series) > 1:
            ax.legend(fontsize="small")
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    if len(panels) > 1:
        fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _line(ax, panel: Panel) -> None:
    for label, values in panel.series.items():
        points = sorted((float(x), v) for x, v in values.items() if v is not None)
        style = "--" if label == "requested" else "o-"
        ax.plot([x for x, _ in points], [v for _, v in points], style, label=label,
                color="grey" if label == "requested" else None)
    ax.grid(alpha=0.3)


def _bars(ax, panel: Panel) -> None:
    categories = list(dict.fromkeys(x for values in panel.series.values() for x in values))
    width = 0.8 / max(len(panel.series), 1)
    for i, (label, values) in enumerate(panel.series.items()):
        offset = (i - (len(panel.series) - 1) / 2) * width
        xs = [k + offset for k, c in enumerate(categories) if values.get(c) is not None]
        heights = [values[c] for c in categories if values.get(c) is not None]
        bars = ax.bar(xs, heights, width, label=label)
        ax.bar_label(bars, labels=[f"{h:,.0f}" if abs(h) >= 1000 else f"{h:.3g}" for h in heights],
                     fontsize="x-small")
    ax.set_xticks(range(len(categories)), categories, rotation=15 if len(categories) > 3 else 0)
    ax.grid(axis="y", alpha=0.3)
