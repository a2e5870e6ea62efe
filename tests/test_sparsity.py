"""Sparse training: the L1 subgradient on the prunable BN γ, its schedule, and its effect on a run."""
import json

import numpy as np
import pytest
import torch

from ssdlab.engine.train import train
from ssdlab.errors import ConfigError
from ssdlab.model.ssd import build_model
from ssdlab.prune.sparsity import SparsityHook, gamma_record, prunable_bns, sparsity_hooks, sr_at


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


def test_step_schedule_scales_sr_after_the_step(tiny_cfg):
    cfg = tiny_cfg("PRUNE.TYPE", "normal", "PRUNE.SR", "0.01", "PRUNE.SR_SCHEDULE", "step",
                   "PRUNE.SR_STEP_AT", "0.5", "PRUNE.SR_STEP_FACTOR", "0.1", "SOLVER.MAX_ITER", "20")
    assert sr_at(cfg, 9) == pytest.approx(0.01)
    assert sr_at(cfg, 10) == pytest.approx(0.001)
    assert sr_at(tiny_cfg("PRUNE.SR", "0.01"), 19) == pytest.approx(0.01)


def test_sparsity_is_off_by_default_and_bad_types_are_named(tiny_cfg):
    assert sparsity_hooks(tiny_cfg(), build_model(tiny_cfg())) == []
    with pytest.raises(ConfigError, match="PRUNE.TYPE"):
        sparsity_hooks(tiny_cfg("PRUNE.TYPE", "strong"), build_model(tiny_cfg()))
    with pytest.raises(ConfigError, match="PRUNE.SR_SCHEDULE"):
        SparsityHook(tiny_cfg("PRUNE.TYPE", "normal", "PRUNE.SR_SCHEDULE", "cosine"), build_model(tiny_cfg()))


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
