"""Sparse training: the L1 subgradient on the prunable BN γ, its schedule, and its effect on a run."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ssdlab.config import PACKAGE_CONFIGS, load_config
from ssdlab.engine.train import train
from ssdlab.errors import ConfigError
from ssdlab.lessons import plugins_from_config
from ssdlab.model.build import build_model
from ssdlab.model.cfg import infer_channels
from ssdlab.prune.plan import ModelSpec, budget_plan, channel_cost, layer_costs, scale_gammas, spatial_sizes
from ssdlab.prune.sparsity import (REPLAN_EVERY, REPLAN_UNTIL, SparsityHook, SparsityPlugin, gamma_record, penalty_direction,
                                   prunable_bns, sr_at, sr_weights)
from ssdlab.prune.surgery import bn_gammas


def test_hook_adds_sr_times_sign_to_prunable_gammas_only(tiny_cfg):
    cfg = tiny_cfg("PRUNE.TYPE", "normal", "PRUNE.SR", "0.25")
    model = build_model(cfg)
    bns = prunable_bns(model, "normal")
    assert sorted(bns) == [0, 1, 2, 3]  # every conv of tiny.cfg has BN and no coupling
    with torch.no_grad():
        bns[1].weight[:4] = torch.tensor([1.0, -2.0, 0.0, 0.5])
    for bn in bns.values():
        bn.weight.grad = torch.full_like(bn.weight, 0.1)
        bn.bias.grad = torch.zeros_like(bn.bias)
    SparsityHook(cfg, model)(model, iteration=0)
    assert torch.allclose(bns[1].weight.grad[:4], torch.tensor([0.35, -0.15, 0.1, 0.35]))
    assert torch.equal(bns[1].bias.grad, torch.zeros_like(bns[1].bias))  # β is not penalised


def test_hoyer_penalty_by_hand_is_l1_less_its_part_along_gamma(tiny_cfg):
    """γ = (1, -2, 0, 0.5): ‖γ‖₁ = 3.5, ‖γ‖₂² = 5.25, so d = sign(γ) - (2/3) γ = (1/3, 1/3, 0, 2/3)."""
    gamma = torch.tensor([1.0, -2.0, 0.0, 0.5])
    direction = penalty_direction(gamma, "hoyer")
    assert torch.allclose(direction, torch.tensor([1 / 3, 1 / 3, 0.0, 2 / 3]))
    assert float(direction @ gamma) == pytest.approx(0.0, abs=1e-6)  # no pull on the layer's scale
    assert torch.allclose(penalty_direction(3 * gamma, "hoyer"), direction)  # the same for any scale
    uniform = torch.full((5,), 0.7)
    assert torch.allclose(penalty_direction(uniform, "hoyer"), torch.zeros(5), atol=1e-6)
    cfg = tiny_cfg("PRUNE.TYPE", "normal", "PRUNE.SR", "0.25", "PRUNE.SR_PENALTY", "hoyer")
    model = build_model(cfg)
    bn = prunable_bns(model, "normal")[1]
    with torch.no_grad():
        bn.weight.copy_(torch.cat([gamma, torch.zeros(bn.num_features - 4)]))
    bn.weight.grad = torch.zeros_like(bn.weight)
    SparsityHook(cfg, model)(model, iteration=0)
    assert torch.allclose(bn.weight.grad[:4], 0.25 * direction)
    with pytest.raises(ConfigError, match=r"PRUNE.SR_PENALTY = 'l2' is unknown; use one of l1, hoyer"):
        SparsityHook(tiny_cfg("PRUNE.TYPE", "normal", "PRUNE.SR_PENALTY", "l2"), model)


def test_a_macs_target_penalises_only_the_channels_its_budget_plan_removes(tiny_cfg):
    cfg = tiny_cfg("PRUNE.TYPE", "normal", "PRUNE.SR", "0.1", "PRUNE.SR_TARGET", "0.6", "PRUNE.GAMMA_SCALE", "layer",
                   "PRUNE.ROUND_TO", "2", "SOLVER.MAX_ITER", str(4 * REPLAN_EVERY))
    model = build_model(cfg)
    bns = prunable_bns(model, "normal")
    with torch.no_grad():
        for i, bn in bns.items():
            bn.weight.copy_(torch.linspace(0.05, 1.0, bn.num_features) * (i + 1))
    expected = budget_plan(ModelSpec.from_model(model), scale_gammas(bn_gammas(model), "layer"), 0.6,
                           regular=True, round_to=2)  # kept widths rounded up to PRUNE.ROUND_TO, as prune --regular 1
    assert all(len(k) % 2 == 0 for k in expected.kept.values())
    assert expected.macs_after <= 0.6 * expected.macs_before and expected.percent > 0
    plugin = SparsityPlugin(cfg)
    plugin.setup(model, torch.device("cpu"))
    for bn in bns.values():
        bn.weight.grad = torch.zeros_like(bn.weight)
    plugin.after_backward(model, iteration=0)
    for i, bn in bns.items():
        removed = torch.ones(bn.num_features, dtype=torch.bool)
        removed[expected.kept_out(i)] = False
        assert torch.allclose(bn.weight.grad[removed], torch.full((int(removed.sum()),), 0.1))
        assert torch.equal(bn.weight.grad[~removed], torch.zeros(int((~removed).sum())))
    record = plugin.eval_record(model)["target"]
    assert record["percent"] == pytest.approx(expected.percent, abs=1e-4) and record["macs"] <= 0.6
    with torch.no_grad():  # the ranking turns over: the hook keeps its plan until the next replan
        for bn in bns.values():
            bn.weight.copy_(bn.weight.flip(0))
    kept = {i: list(plugin.hook.target.kept_out(i)) for i in bns}
    plugin.after_backward(model, iteration=1)
    assert {i: list(plugin.hook.target.kept_out(i)) for i in bns} == kept
    plugin.after_backward(model, iteration=REPLAN_EVERY)
    replanned = {i: list(plugin.hook.target.kept_out(i)) for i in bns}
    assert replanned != kept
    with torch.no_grad():  # turned back: past REPLAN_UNTIL of the run the plan no longer follows
        for bn in bns.values():
            bn.weight.copy_(bn.weight.flip(0))
    plugin.after_backward(model, iteration=int(REPLAN_UNTIL * 4 * REPLAN_EVERY))
    assert {i: list(plugin.hook.target.kept_out(i)) for i in bns} == replanned


def test_step_schedule_scales_sr_after_the_step(tiny_cfg):
    cfg = tiny_cfg("PRUNE.TYPE", "normal", "PRUNE.SR", "0.01", "PRUNE.SR_SCHEDULE", "step",
                   "PRUNE.SR_STEP_AT", "0.5", "PRUNE.SR_STEP_FACTOR", "0.1", "SOLVER.MAX_ITER", "20")
    assert sr_at(cfg, 9) == pytest.approx(0.01)
    assert sr_at(cfg, 10) == pytest.approx(0.001)
    assert sr_at(tiny_cfg("PRUNE.SR", "0.01"), 19) == pytest.approx(0.01)


def test_sparsity_is_off_by_default_and_bad_types_are_named(tiny_cfg):
    assert plugins_from_config(tiny_cfg()) == []
    with pytest.raises(ConfigError, match="PRUNE.TYPE"):
        plugins_from_config(tiny_cfg("PRUNE.TYPE", "strong"))
    assert [type(p).__name__ for p in plugins_from_config(tiny_cfg("PRUNE.TYPE", "normal"))] == ["SparsityPlugin"]
    with pytest.raises(ConfigError, match="PRUNE.SR_SCHEDULE"):
        SparsityHook(tiny_cfg("PRUNE.TYPE", "normal", "PRUNE.SR_SCHEDULE", "cosine"), build_model(tiny_cfg()))


def test_channel_params_by_hand_on_the_course_model():
    cfg = load_config(PACKAGE_CONFIGS / "course" / "plain_shapes.yaml")
    cost = channel_cost(ModelSpec.from_model(build_model(cfg)), "normal")
    assert cost[0] == 3 * 9 + 2 + 24 * 9  # its 3x3 filter on RGB, its BN γ and β, one input of layer 1 (24 filters)
    # layer 8 (128 -> 192, head level 2): its filter and BN, one input of layer 10 (192 filters) and of the
    # level-2 heads (4 boxes x (6 classes + 4 offsets) outputs)
    assert cost[8] == 128 * 9 + 2 + 192 * 9 + 4 * (6 + 4) * 9


def test_channel_macs_by_hand_on_the_course_model():
    cfg = load_config(PACKAGE_CONFIGS / "course" / "plain_shapes.yaml")
    spec = ModelSpec.from_model(build_model(cfg))
    cost, h = channel_cost(spec, "normal", "macs"), spatial_sizes(spec.layers, spec.image_size)
    assert cost[0] == 3 * 9 * h[0] ** 2 + 24 * 9 * h[1] ** 2  # its own 3x3 filter, one input of layer 1's 24
    assert cost[8] == 128 * 9 * h[8] ** 2 + 192 * 9 * h[10] ** 2 + 4 * (6 + 4) * 9 * h[8] ** 2  # + level-2 heads
    params = channel_cost(spec, "normal")
    assert cost[0] / params[0] > 50 * cost[8] / params[8]  # early layers carry the MACs, late ones the params


def test_params_weighting_scales_sr_per_layer_around_one(tiny_cfg):
    model = build_model(tiny_cfg())
    assert set(sr_weights(model, "normal", "none").values()) == {1.0}
    weights = sr_weights(model, "normal", "params")
    bns = prunable_bns(model, "normal")
    cost = channel_cost(ModelSpec.from_model(model), "normal")
    assert weights[1] / weights[0] == pytest.approx(cost[1] / cost[0])
    widths = {i: bn.num_features for i, bn in bns.items()}
    assert sum(weights[i] * widths[i] for i in bns) / sum(widths.values()) == pytest.approx(1.0)
    cfg = tiny_cfg("PRUNE.TYPE", "normal", "PRUNE.SR", "0.5", "PRUNE.SR_WEIGHT", "params")
    for bn in bns.values():
        bn.weight.grad = torch.zeros_like(bn.weight)
    SparsityHook(cfg, model)(model, iteration=0)
    for i, bn in bns.items():
        assert torch.allclose(bn.weight.grad, 0.5 * weights[i] * torch.sign(bn.weight))
    macs = sr_weights(model, "normal", "macs")
    by_macs = channel_cost(ModelSpec.from_model(model), "normal", "macs")
    assert macs[1] / macs[0] == pytest.approx(by_macs[1] / by_macs[0])
    with pytest.raises(ConfigError, match="PRUNE.SR_WEIGHT"):
        SparsityHook(tiny_cfg("PRUNE.TYPE", "normal", "PRUNE.SR_WEIGHT", "fastest"), model)


def test_latency_cost_is_the_macs_cost_weighed_by_each_layers_measured_speed():
    cfg = load_config(PACKAGE_CONFIGS / "course" / "plain_shapes.yaml")
    spec = ModelSpec.from_model(build_model(cfg))
    macs = channel_cost(spec, "normal", "macs")
    keys = [key for key, _, m in layer_costs(spec, infer_channels(spec.layers), 6)]
    uniform = channel_cost(spec, "normal", "latency", dict.fromkeys(keys, 2e-6))
    assert all(uniform[i] == pytest.approx(2e-6 * macs[i]) for i in macs)  # one speed everywhere: MACs x speed
    slow_first = channel_cost(spec, "normal", "latency", {**dict.fromkeys(keys, 1e-6), 0: 5e-6})
    h = spatial_sizes(spec.layers, spec.image_size)
    assert slow_first[0] == pytest.approx(5e-6 * 3 * 9 * h[0] ** 2 + 1e-6 * 24 * 9 * h[1] ** 2)  # own conv slower
    assert slow_first[8] == pytest.approx(1e-6 * macs[8])
    with pytest.raises(ValueError, match="speed"):
        channel_cost(spec, "normal", "latency")


def test_latency_weighting_measures_once_and_keeps_the_table_in_the_run(tiny_cfg, tmp_path):
    model = build_model(tiny_cfg())
    table = tmp_path / "run" / "layer_latency.json"
    training = model.training
    measured = sr_weights(model, "normal", "latency", table)
    assert model.training == training  # timed on a copy: the model is still in its mode
    stored = json.loads(table.read_text())
    assert stored["cpu"] and set(stored["ms"]) >= {"0", "1", "2", "3", "head"}
    stored["ms"]["0"] *= 1000  # a resumed run reads the table instead of timing again
    table.write_text(json.dumps(stored))
    again = sr_weights(model, "normal", "latency", table)
    assert again[0] / again[1] > 10 * measured[0] / measured[1]
    widths = {i: bn.num_features for i, bn in prunable_bns(model, "normal").items()}
    assert sum(again[i] * widths[i] for i in widths) / sum(widths.values()) == pytest.approx(1.0)
    hook = SparsityHook(tiny_cfg("PRUNE.TYPE", "normal", "PRUNE.SR_WEIGHT", "latency", out="run"), model)
    assert (Path(hook.cfg.OUTPUT_DIR) / "layer_latency.json").is_file()


def _mean_gamma(model) -> float:
    return float(np.mean(np.concatenate([np.asarray(v) for v in gamma_record(model, "normal").values()])))


@pytest.mark.slow
def test_sparse_training_drives_gamma_down_and_logs_it(tiny_cfg):
    common = ["SOLVER.MAX_ITER", "16", "SOLVER.EVAL_PERIOD", "8", "SOLVER.SEED", "5"]
    plain = train(tiny_cfg(*common, out="plain"), progress=False)
    sparse_cfg = tiny_cfg(*common, "PRUNE.TYPE", "normal", "PRUNE.SR", "0.05", out="sparse")
    sparse = train(sparse_cfg, progress=False)
    from ssdlab.engine.checkpoint import load

    dense_gamma, sparse_gamma = _mean_gamma(load(plain.checkpoint)), _mean_gamma(load(sparse.checkpoint))
    assert sparse_gamma < dense_gamma - 0.01, (sparse_gamma, dense_gamma)
    records = [json.loads(line) for line in (sparse.checkpoint.parent / "metrics.jsonl").read_text().splitlines()]
    gammas = [r for r in records if "gamma" in r]
    assert [r["iter"] for r in gammas] == [8, 16]
    assert sorted(gammas[-1]["gamma"]) == ["0", "1", "2", "3"] and len(gammas[-1]["gamma"]["1"]) == 32
    assert np.mean(gammas[-1]["gamma"]["1"]) < np.mean(gammas[0]["gamma"]["1"])
