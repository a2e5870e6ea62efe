"""Matplotlib helpers for the notebooks: boxes (ground truth, priors, detections) on an image axis."""
from __future__ import annotations

from typing import cast

import numpy as np
from matplotlib.axes import Axes
from matplotlib.patches import Rectangle

from ssdlab.viz.draw import class_color


def plot_boxes(ax: Axes, boxes, labels=None, class_names: tuple[str, ...] | None = None, color=None,
               linewidth: float = 1.5, linestyle: str = "-") -> list[Rectangle]:
    """Draw xyxy pixel boxes on ax, coloured by class (or color) and captioned when class_names is given."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    labels = None if labels is None else np.asarray(labels).reshape(-1)
    patches = []
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        label = None if labels is None else int(labels[i])
        edge = color if color is not None or label is None else tuple(c / 255 for c in class_color(label))
        patch = Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=edge or "yellow",
                          linewidth=linewidth, linestyle=linestyle)
        patches.append(cast(Rectangle, ax.add_patch(patch)))  # add_patch returns its argument
        if class_names is not None and label is not None:
            ax.text(x0, y0, class_names[label], fontsize=7, va="bottom",
                    bbox={"facecolor": edge or "yellow", "pad": 1, "linewidth": 0})
    return patches


def pareto_front(sizes, scores) -> np.ndarray:
    """Mask of the points no other point beats (as small and as accurate, strictly better in one); NaN never is."""
    sizes, scores = np.asarray(sizes, dtype=np.float64), np.asarray(scores, dtype=np.float64)
    front = np.isfinite(sizes) & np.isfinite(scores)
    for i in np.flatnonzero(front):
        beaten = (sizes <= sizes[i]) & (scores >= scores[i]) & ((sizes < sizes[i]) | (scores > scores[i]))
        front[i] = not beaten.any()
    return front


def plot_pareto(ax: Axes, names, sizes, scores, groups=None, numbered: bool = False) -> np.ndarray:
    """Size against accuracy, one colour per group, every point named (numbered: 1, 2, ... in the order of names,
    for a key table beside the plot when names are long), the Pareto front joined; returns the front."""
    sizes, scores = np.asarray(sizes, dtype=np.float64), np.asarray(scores, dtype=np.float64)
    groups = np.asarray(["" for _ in sizes] if groups is None else groups, dtype=object)
    for group in dict.fromkeys(groups):
        mine = groups == group
        ax.scatter(sizes[mine], scores[mine], s=60, label=group or None, zorder=3)
    for number, (name, x, y) in enumerate(zip(names, sizes, scores), start=1):
        ax.annotate(str(number) if numbered else str(name), (x, y), textcoords="offset points", xytext=(5, 4),
                    fontsize=8 if numbered else 7)
    front = pareto_front(sizes, scores)
    order = np.argsort(sizes[front])
    ax.step(sizes[front][order], scores[front][order], where="post", color="grey", linestyle="--",
            label="Pareto front", zorder=2)
    ax.legend(fontsize=8)
    return front
