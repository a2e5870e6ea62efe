"""The benchmark plots: VOC mAP against size with the Pareto front, and CPU latency against parameters."""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402

from ssdlab.viz import plots as viz_plots  # noqa: E402

MARKERS = {"plain": "o", "residual": "s", "mobilenet": "^"}


def label(row: dict) -> str:
    """A short point label: model and variant."""
    return f"{row['model']} {row['variant']}".strip()


def pareto_front(rows: list[dict], x: str = "size_mib", y: str = "voc_map") -> list[dict]:
    """Rows no other row beats on both axes (smaller x and higher y), by increasing x (ssdlab.viz.plots.pareto_front)."""
    mask = viz_plots.pareto_front([r[x] for r in rows], [r[y] for r in rows])
    return sorted((r for r, keep in zip(rows, mask) if keep), key=lambda r: r[x])


def _scatter(ax: Axes, rows: list[dict], x: str, y: str) -> None:
    """One colour per family, one marker per model."""
    families = list(dict.fromkeys(r["family"] for r in rows))
    colours = plt.get_cmap("tab10")
    for i, family in enumerate(families):
        for model, marker in MARKERS.items():
            mine = [r for r in rows if r["family"] == family and r["model"].split()[0] == model]
            if mine:
                ax.scatter([r[x] for r in mine], [r[y] for r in mine], color=colours(i % 10), marker=marker,
                           s=28, alpha=0.8, label=f"{family} ({model})")


def _finish(fig, ax: Axes) -> None:
    """Grid, the legend right of the axes, tight layout."""
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()


def _finite(rows: list[dict], *keys: str) -> list[dict]:
    """Rows whose values under keys are finite numbers."""
    return [r for r in rows if all(isinstance(r.get(k), (int, float)) and math.isfinite(r[k]) for k in keys)]


def pareto_plot(rows: list[dict], path: Path, title: str) -> list[dict]:
    """VOC mAP@0.5 against bit-width-aware size, the Pareto front drawn and labelled; the front's rows."""
    rows = _finite(rows, "size_mib", "voc_map")
    front = pareto_front(rows)
    fig, ax = plt.subplots(figsize=(11, 6))
    _scatter(ax, rows, "size_mib", "voc_map")
    ax.step([r["size_mib"] for r in front], [r["voc_map"] for r in front], where="post", color="black",
            linewidth=1, label="Pareto front")
    for i, r in enumerate(front):  # alternate below / above the point so that neighbours do not overlap
        ax.annotate(label(r), (r["size_mib"], r["voc_map"]), fontsize=6, rotation=20,
                    xytext=(4, -12 if i % 2 else 5), textcoords="offset points")
    ax.set(xscale="log", xlabel="size (MiB, bit-width aware, log scale)", ylabel="VOC mAP@0.5 (area)", title=title)
    _finish(fig, ax)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return front


def latency_plot(rows: list[dict], path: Path, title: str) -> None:
    """CPU latency (batch 1) against parameters."""
    rows = _finite(rows, "params", "ms")
    fig, ax = plt.subplots(figsize=(11, 6))
    _scatter(ax, rows, "params", "ms")
    ax.set(xscale="log", xlabel="parameters (log scale)",
           ylabel="CPU latency, batch 1 (ms; QAT rows: fake quantization)", title=title)
    _finish(fig, ax)
    fig.savefig(path, dpi=120)
    plt.close(fig)
