"""The threshold explorer: widgets over the pure pruning plan (notebook 03).

A prune-ratio slider (shown in %) and toggles (mode, regular, max) re-run `ssdlab.prune.plan.plan` on
every change and redraw: the global |γ| histogram with the threshold line, kept vs pruned
channels per layer, params and MACs before/after, and a warning past the highest safe ratio.
The "evaluate" button measures the masked (compensated) model's mAP at the chosen setting —
on request only, since an evaluation takes seconds.

    explorer = ThresholdExplorer(model, evaluate=lambda m: evaluate_model(m, val, cfg)["voc_map"])
    explorer.widget()          # in a notebook cell
    explorer.percent.value = 0.6; explorer.figure_data()["kept"]   # what tests drive
"""
from __future__ import annotations

from typing import Callable

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
from IPython import get_ipython
from IPython.display import display

from ssdlab.errors import PruneError
from ssdlab.model.cfg import feature_layers
from ssdlab.prune.plan import MODES, ModelSpec, PrunePlan, plan, prunable_groups
from ssdlab.prune.surgery import masked_model, plan_gammas


class ThresholdExplorer:
    """Sliders and toggles that plan a pruning live; a button that evaluates the plan."""

    def __init__(self, model, evaluate: Callable | None = None, percent: float = 0.5, mode: str = "normal"):
        self.model, self.evaluate_fn = model, evaluate
        self.spec = ModelSpec.from_model(model)
        self.gammas = plan_gammas(model)  # under the model's PRUNE.GAMMA_SCALE, as `ssdlab prune` ranks them
        self.levels = len(feature_layers(self.spec.layers))  # head levels of the unpruned model
        self.percent = widgets.FloatSlider(value=percent, min=0.0, max=0.99, step=0.01, description="prune",
                                           continuous_update=True, readout_format=".0%",
                                           layout=widgets.Layout(width="520px"),
                                           style={"description_width": "initial"})
        self.mode = widgets.ToggleButtons(options=list(MODES), value=mode, description="mode")
        self.regular = widgets.Checkbox(value=False, description="regular (multiples of 8)")
        self.drop_levels = widgets.Checkbox(value=False, description="max (drop head levels)")
        self.summary, self.warning, self.result = widgets.HTML(), widgets.HTML(), widgets.HTML()
        self.button = widgets.Button(description="evaluate mAP", button_style="primary")
        self.output = widgets.Output()
        self.plan: PrunePlan | None = None
        self.figure = None
        self.unpruned_score: float | None = None  # evaluated once, on the first press of the button
        for name, part in (("percent", self.percent), ("mode", self.mode), ("regular", self.regular),
                           ("max", self.drop_levels), ("summary", self.summary), ("warning", self.warning),
                           ("result", self.result), ("evaluate", self.button), ("kept", self.output)):
            part.add_class(f"ssdlab-{name}")  # stable hooks for the browser test (scripts/browser_test.py)
        for control in (self.percent, self.mode, self.regular, self.drop_levels):
            control.observe(lambda _change: self.update(), names="value")
        self.button.on_click(lambda _button: self.evaluate())
        self.update()

    def update(self) -> None:
        """Re-plan for the current controls and refresh the text and the figure."""
        self.result.value = ""
        try:
            self.plan = plan(self.spec, self.gammas, self.percent.value, self.mode.value, self.regular.value,
                             self.drop_levels.value, self.model.cfg.PRUNE.ROUND_TO)
        except PruneError as err:
            self.plan = None
            self.warning.value = f"<b style='color:#b00'>{err}</b>"
            self.summary.value = ""
            return
        data = self.figure_data()
        self.summary.value = summary_text(self.plan, data, self.levels)
        self.warning.value = warning_text(self.plan)
        self.redraw(data)

    def figure_data(self) -> dict:
        """What the figure shows: pooled |γ|, threshold, and per-layer width and kept count."""
        groups = prunable_groups(self.spec.layers, self.mode.value, self.spec.in_channels)
        layers = sorted(i for g in groups for i in g.producers)
        kept = {i: len(self.plan.kept_out(i)) if i <= self.plan.cut else 0 for i in layers} if self.plan else {}
        return {"gammas": np.concatenate([self.gammas[i] for i in layers]), "layers": layers,
                "threshold": self.plan.threshold if self.plan else None,
                "widths": {i: self.plan.widths_before[i] for i in layers} if self.plan else {}, "kept": kept}

    def redraw(self, data: dict) -> None:
        """Draw the histogram and the bar chart of figure_data() into the output area."""
        self.figure = draw_plan(data)
        if get_ipython() is not None:  # in a notebook; tests read figure_data() instead
            self.output.clear_output(wait=True)
            with self.output:
                display(self.figure)

    def evaluate(self) -> float | None:
        """mAP of the compensated masked model at the current setting (needs `evaluate`)."""
        if self.evaluate_fn is None or self.plan is None:
            self.result.value = "no evaluation function given" if self.evaluate_fn is None else ""
            return None
        self.result.value = "evaluating..."
        if self.unpruned_score is None:
            self.unpruned_score = float(self.evaluate_fn(self.model))
        score = float(self.evaluate_fn(masked_model(self.model, self.plan, "compensated")))
        self.result.value = (f"VOC mAP@0.5: unpruned {self.unpruned_score:.4f} → masked + compensated "
                             f"<b>{score:.4f}</b> ({(score - self.unpruned_score) * 100:+.2f} points)")
        return score

    def widget(self) -> widgets.Widget:
        """The whole explorer as one widget."""
        controls = widgets.HBox([self.mode, widgets.VBox([self.regular, self.drop_levels])])
        return widgets.VBox([self.percent, controls, self.summary, self.warning, self.output,
                             widgets.HBox([self.button, self.result])]).add_class("ssdlab-explorer")


def summary_text(result: PrunePlan, data: dict, levels: int) -> str:
    """Params, MACs, prunable channels (all of them, those past a `max` cut counted as pruned) and head levels
    (of `levels`) before -> after as HTML lines."""
    before, after = sum(data["widths"].values()), sum(data["kept"].values())
    dropped = (f" (<code>max</code> drops levels {result.levels}–{levels - 1} and every layer after layer "
               f"{result.cut}: their channels count as pruned)") if result.levels < levels else ""
    return (f"threshold |γ| ≥ {result.threshold:.4g} · prunable channels {before:,} → {after:,}<br>"
            f"params {result.params_before:,} → {result.params_after:,} (<b>−{result.compression():.1%}</b>) · "
            f"MACs {result.macs_before / 1e6:.1f} M → {result.macs_after / 1e6:.1f} M · head levels {levels} → "
            f"{result.levels}{dropped}")


def warning_text(result: PrunePlan) -> str:
    """A warning when the percent empties a layer (past the highest safe ratio)."""
    if result.safe:
        return f"highest safe percent: {result.highest_safe:.3f}"
    return (f"<b style='color:#b00'>past the highest safe percent {result.highest_safe:.3f}: layer "
            f"{result.emptied[0]} has no channel above the threshold</b> (it keeps its largest; "
            "<code>max</code> drops the head levels after it)")


def draw_plan(data: dict):
    """A figure: |γ| histogram with the threshold, and kept/pruned channels per layer."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.2))
    left.hist(data["gammas"], bins=60, color="#4c72b0")
    if data["threshold"] is not None:
        left.axvline(data["threshold"], color="#c44e52", linestyle="--", label="threshold")
        left.legend()
    left.set_yscale("log")  # sparse training piles many γ at 0: a linear axis would show only that spike
    left.set(xlabel="|γ|", ylabel="channels (log scale)", title="BN |γ| of the prunable layers")
    names = [str(i) for i in data["layers"]]
    kept = [data["kept"].get(i, 0) for i in data["layers"]]
    pruned = [data["widths"].get(i, 0) - k for i, k in zip(data["layers"], kept)]
    right.bar(names, kept, color="#55a868", label="kept")
    right.bar(names, pruned, bottom=kept, color="#c7c7c7", label="pruned")
    right.set(xlabel="cfg layer", ylabel="channels", title="kept vs pruned")
    right.legend()
    fig.tight_layout()
    plt.close(fig)
    return fig
