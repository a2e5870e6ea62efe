"""The threshold explorer's widgets, driven without a kernel: each control re-plans and redraws."""
import numpy as np
import pytest
import torch

from ssdlab.config import load_config
from ssdlab.model.ssd import build_model
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
    assert len(calls) == 1 and calls[0] is not plain
    assert "VOC mAP@0.5" in explorer.result.value
    explorer.percent.value = 0.6
    assert explorer.result.value == ""  # a stale score is cleared


def test_widgets_carry_dom_classes_for_the_browser_test(plain):
    explorer = ThresholdExplorer(plain)
    widget = explorer.widget()
    assert "ssdlab-explorer" in widget._dom_classes
    for name, part in (("percent", explorer.percent), ("mode", explorer.mode), ("regular", explorer.regular),
                       ("summary", explorer.summary), ("kept", explorer.output)):
        assert f"ssdlab-{name}" in part._dom_classes
