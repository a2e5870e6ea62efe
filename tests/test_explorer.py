"""The threshold explorer's widgets, driven without a kernel: each control re-plans and redraws."""
import numpy as np
import pytest
import torch

from ssdlab.config import load_config
from ssdlab.model.build import build_model
from ssdlab.prune.surgery import make_plan
from ssdlab.viz.explorer import ThresholdExplorer


def model_with_gammas(recipe: str):
    """A course model whose BN γ are spread out (a few tiny, like after sparse training)."""
    model = build_model(load_config(f"ssdlab/configs/course/{recipe}.yaml")).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(torch.rand_like(m.weight) * torch.where(torch.rand_like(m.weight) < 0.4, 0.01, 1.0))
    return model


@pytest.fixture(scope="module")
def plain():
    return model_with_gammas("plain_shapes")


def test_slider_replans_and_the_figure_follows(plain):
    explorer = ThresholdExplorer(plain, percent=0.3)
    before = explorer.figure_data()
    explorer.percent.value = 0.6
    after = explorer.figure_data()
    expected = make_plan(plain, 0.6)
    assert after["threshold"] == pytest.approx(expected.threshold)
    assert after["threshold"] > before["threshold"]
    assert after["kept"] == {i: len(expected.kept[i]) for i in after["layers"]}
    assert sum(after["kept"].values()) < sum(before["kept"].values())
    assert f"{expected.params_after:,}" in explorer.summary.value and "MACs" in explorer.summary.value
    assert len(explorer.figure.axes) == 2 and len(explorer.figure.axes[1].patches) == 2 * len(after["layers"])
    assert explorer.figure.axes[0].get_yscale() == "log"  # the spike of zero γ does not flatten the rest
    assert explorer.percent.readout_format == ".0%" and "%" not in explorer.percent.description


def test_toggles_regular_and_mode():
    residual = model_with_gammas("residual_shapes")
    explorer = ThresholdExplorer(residual, percent=0.4)
    normal_layers = explorer.figure_data()["layers"]
    explorer.mode.value = "shortcut"
    assert len(explorer.figure_data()["layers"]) > len(normal_layers)
    explorer.regular.value = True
    data = explorer.figure_data()
    assert all(k % 8 == 0 or k == data["widths"][i] for i, k in data["kept"].items())


def test_warning_past_the_highest_safe_ratio_and_max(plain):
    explorer = ThresholdExplorer(plain, percent=0.1)
    assert "highest safe percent" in explorer.warning.value and "past" not in explorer.warning.value
    explorer.percent.value = round(min(0.99, explorer.plan.highest_safe + 0.05), 2)
    assert "past the highest safe percent" in explorer.warning.value
    assert "`" not in explorer.warning.value and "<code>max</code>" in explorer.warning.value
    explorer.drop_levels.value = True  # empties a layer before the first level, or drops levels
    assert "error" in explorer.warning.value.lower() or "no head level" in explorer.warning.value \
        or explorer.plan.levels <= 6


def test_button_evaluates_the_masked_model_once(plain):
    calls = []

    def zero_gammas(model):
        calls.append(model)
        return float(np.mean([float((m.weight == 0).float().mean()) for m in model.modules()
                              if isinstance(m, torch.nn.BatchNorm2d)]))

    explorer = ThresholdExplorer(plain, evaluate=zero_gammas, percent=0.5)
    explorer.percent.value = 0.55  # moving the slider does not evaluate
    assert calls == []
    explorer.button.click()
    assert len(calls) == 2 and calls[0] is plain and calls[1] is not plain  # the unpruned model once, first
    masked = zero_gammas(calls[1])
    assert f"unpruned {zero_gammas(plain):.4f}" in explorer.result.value and f"<b>{masked:.4f}</b>" in \
        explorer.result.value and "points" in explorer.result.value
    explorer.percent.value = 0.6
    assert explorer.result.value == ""  # a stale score is cleared
    explorer.button.click()
    assert len(calls) == 5  # (zero_gammas above counted twice) the unpruned score is kept: one more evaluation


def test_widgets_carry_dom_classes_for_the_browser_test(plain):
    explorer = ThresholdExplorer(plain)
    widget = explorer.widget()
    assert "ssdlab-explorer" in widget._dom_classes
    for name, part in (("percent", explorer.percent), ("mode", explorer.mode), ("regular", explorer.regular),
                       ("summary", explorer.summary), ("kept", explorer.output)):
        assert f"ssdlab-{name}" in part._dom_classes


def test_max_says_which_levels_it_drops_and_keeps_the_channel_total():
    model = model_with_gammas("plain_shapes")
    with torch.no_grad():  # the last layer's γ all tiny: past the highest safe ratio it empties, max drops its level
        model.backbone.module_list[12].bn.weight.fill_(1e-4)
    explorer = ThresholdExplorer(model, percent=0.1)
    total = sum(explorer.figure_data()["widths"].values())
    assert f"prunable channels {total:,} →" in explorer.summary.value and "head levels 6 → 6" in explorer.summary.value
    explorer.drop_levels.value = True
    for percent in np.arange(round(explorer.plan.highest_safe, 2) + 0.01, 0.99, 0.01):
        explorer.percent.value = round(float(percent), 2)
        if explorer.plan is not None and explorer.plan.levels < 6:
            break
    assert explorer.plan is not None and explorer.plan.levels < 6, "no ratio drops a level of this model"
    summary = explorer.summary.value
    assert f"prunable channels {total:,} →" in summary  # the same total with max on: dropped layers count as pruned
    assert f"head levels 6 → {explorer.plan.levels}" in summary and "drops levels" in summary
