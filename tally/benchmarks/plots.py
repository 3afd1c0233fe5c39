"""Plots for people (matplotlib stays out of ``optimization``): accuracy per count."""

from __future__ import annotations

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
    if "mean_count" in per_count[counts[0]]:
        ax2.plot(xs, [per_count[c]["mean_count"] for c in counts], "o-", label="mean detected")
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
