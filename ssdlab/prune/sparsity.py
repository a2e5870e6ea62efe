"""Sparse training (network slimming): an L1 penalty on the BN γ of the prunable layers.

After `loss.backward()` and before `optimizer.step()` the trainer calls the hook, which adds
the L1 subgradient `SR · sign(γ)` to the gradient of every prunable γ (PRUNE.TYPE picks the
layers: normal | shortcut | coupled; see ssdlab.prune.plan). With PRUNE.SR_SCHEDULE `step`,
SR is multiplied by PRUNE.SR_STEP_FACTOR once PRUNE.SR_STEP_AT of SOLVER.MAX_ITER is done,
so the network can recover accuracy at the end while the small γ stay small. With
PRUNE.SR_WEIGHT `params` (or `macs`), each layer's SR is scaled by the parameters (or the MACs per
image) one of its channels carries, relative to the mean over all prunable channels, so the global
threshold of the plan meets the expensive channels first: the same share of channels then removes
more parameters (or more computation: the wide, late layers carry the parameters, the early
high-resolution ones the MACs).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ssdlab.config import CfgNode
from ssdlab.errors import ConfigError
from ssdlab.prune.plan import COSTS, MODES, ModelSpec, channel_cost, prunable_layers

SCHEDULES = ("constant", "step")
WEIGHTS = ("none", *COSTS)


def sparsity_enabled(cfg: CfgNode) -> bool:
    """True when PRUNE.TYPE names a prune mode (anything but 'no')."""
    kind = cfg.PRUNE.TYPE
    if kind != "no" and kind not in MODES:
        raise ConfigError(f"PRUNE.TYPE = {kind!r} is unknown; use no, {', '.join(MODES)}")
    return kind != "no"


def sr_at(cfg: CfgNode, iteration: int) -> float:
    """The sparsity rate at an iteration under PRUNE.SR_SCHEDULE."""
    prune = cfg.PRUNE
    if prune.SR_SCHEDULE not in SCHEDULES:
        raise ConfigError(f"PRUNE.SR_SCHEDULE = {prune.SR_SCHEDULE!r} is unknown; use one of {', '.join(SCHEDULES)}")
    if prune.SR_SCHEDULE == "step" and iteration >= prune.SR_STEP_AT * cfg.SOLVER.MAX_ITER:
        return prune.SR * prune.SR_STEP_FACTOR
    return prune.SR


def prunable_bns(model: nn.Module, mode: str) -> dict[int, nn.BatchNorm2d]:
    """The BatchNorm of every prunable layer of an SSD, by cfg layer index."""
    model = getattr(model, "module", model)
    return {i: model.backbone.module_list[i].bn
            for i in prunable_layers(model.backbone.defs, mode, model.cfg.INPUT.CHANNELS)}


def sr_weights(model: nn.Module, mode: str, weight: str) -> dict[int, float]:
    """Per prunable layer, the factor on SR: 1 for `none`; for `params` or `macs`, what one of its channels
    carries over the mean across all prunable channels."""
    if weight not in WEIGHTS:
        raise ConfigError(f"PRUNE.SR_WEIGHT = {weight!r} is unknown; use one of {', '.join(WEIGHTS)}")
    bns = prunable_bns(model, mode)
    if weight == "none":
        return dict.fromkeys(bns, 1.0)
    net = getattr(model, "module", model)
    cost = channel_cost(ModelSpec.from_model(net), mode, weight)
    widths = {i: bn.num_features for i, bn in bns.items()}
    mean = sum(cost[i] * widths[i] for i in bns) / sum(widths.values())
    return {i: cost[i] / mean for i in bns}


class SparsityHook:
    """The after-backward hook that adds SR · w · sign(γ) to the prunable γ gradients (w: PRUNE.SR_WEIGHT)."""

    def __init__(self, cfg: CfgNode, model: nn.Module):
        sparsity_enabled(cfg)
        sr_at(cfg, 0)  # validates the schedule now rather than mid-run
        self.cfg = cfg
        self.bns = prunable_bns(model, cfg.PRUNE.TYPE)
        self.weights = sr_weights(model, cfg.PRUNE.TYPE, cfg.PRUNE.SR_WEIGHT)

    @torch.no_grad()
    def __call__(self, model: nn.Module, iteration: int) -> None:
        """γ.grad += SR · w · sign(γ) for every prunable BN."""
        rate = sr_at(self.cfg, iteration)
        for i, bn in self.bns.items():
            if bn.weight.grad is not None:
                bn.weight.grad.add_(torch.sign(bn.weight), alpha=rate * self.weights[i])


def sparsity_hooks(cfg: CfgNode, model: nn.Module) -> list[SparsityHook]:
    """[SparsityHook] when PRUNE.TYPE asks for sparse training, else []."""
    return [SparsityHook(cfg, model)] if sparsity_enabled(cfg) else []


def gamma_record(model: nn.Module, mode: str, decimals: int = 5) -> dict[str, list[float]]:
    """|γ| of every prunable layer (layer index as a string -> values), for the metrics log."""
    return {str(i): np.round(bn.weight.detach().abs().cpu().numpy(), decimals).tolist()
            for i, bn in prunable_bns(model, mode).items()}
