"""Sparse training (network slimming): an L1 penalty on the BN γ of the prunable layers.

After `loss.backward()` and before `optimizer.step()` the trainer calls the hook (SparsityPlugin), which adds
the L1 subgradient `SR · sign(γ)` to the gradient of every prunable γ (PRUNE.TYPE picks the
layers: normal | shortcut | coupled; see ssdlab.prune.plan). With PRUNE.SR_SCHEDULE `step`,
SR is multiplied by PRUNE.SR_STEP_FACTOR once PRUNE.SR_STEP_AT of SOLVER.MAX_ITER is done,
so the network can recover accuracy at the end while the small γ stay small. With
PRUNE.SR_WEIGHT `params` (or `macs`, `latency`), each layer's SR is scaled by the parameters (or the
MACs per image, or the estimated CPU ms) one of its channels carries, relative to the mean over all
prunable channels, so the global threshold of the plan meets the expensive channels first: the same
share of channels then removes more parameters (or more computation: the wide, late layers carry
the parameters, the early high-resolution ones the MACs). `latency` times every layer of the model
once on this machine's CPU (batch 1, eager mode; ssdlab.engine.profile.layer_latency) and weighs each
conv's MACs by its measured ms per MAC: layers that run slowly for their MACs (high resolution, few
channels) count for more. The table is kept in OUTPUT_DIR/layer_latency.json, so a resumed run uses
the same weights.

PRUNE.SR_PENALTY `hoyer` makes the penalty blind to a layer's scale: scaling all of a layer's γ (and β) by one
factor passes through the ReLU and the next BatchNorm undoes it, so plain L1 can be paid by shrinking a whole
layer instead of zeroing single channels. `hoyer` adds SR · w · (sign(γ) − (‖γ‖₁ / ‖γ‖₂²) γ) per layer: the L1
subgradient less its component along γ, i.e. ‖γ‖₂ times the gradient of the Hoyer measure ‖γ‖₁ / ‖γ‖₂
(DeepHoyer, Yang et al. 2020). It shrinks the γ below ‖γ‖₂² / ‖γ‖₁ and grows those above, leaving the
layer's scale alone.

PRUNE.SR_TARGET (a share of the MACs, 0 = off) aims the penalty at a budget: every REPLAN_EVERY iterations of
the first REPLAN_UNTIL of the run the hook plans the prune that keeps that share of the MACs
(ssdlab.prune.plan.budget_plan), then keeps its last plan, and adds the penalty to the channels that plan removes
only, so the network learns without them while it trains; the rest go free. (A channel dropped by a late replan
would have no time to reach zero.)
The plan ranks |γ| under PRUNE.GAMMA_SCALE as `ssdlab prune` does (`layer` keeps a layer whose γ shrank
together from being emptied). Prune the result with `ssdlab prune --macs S --regular 1` (the same budget; the
log's `target` names the percent): by then those channels' γ are near zero.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
import torch
from torch import nn

from ssdlab.config import CfgNode, check_choice
from ssdlab.engine.plugins import Plugin
from ssdlab.engine.profile import cpu_flags, layer_latency
from ssdlab.files import write_json
from ssdlab.prune.plan import ModelSpec, PrunePlan, channel_cost, layer_speed, prunable_layers
from ssdlab.prune.surgery import make_budget_plan

if TYPE_CHECKING:
    from ssdlab.model.ssd import SSD

REPLAN_EVERY = 50  # iterations between two budget plans of PRUNE.SR_TARGET
REPLAN_UNTIL = 0.5  # the share of SOLVER.MAX_ITER after which the plan stays as it is


def sparsity_enabled(cfg: CfgNode) -> bool:
    """True when PRUNE.TYPE names a prune mode (anything but 'no')."""
    check_choice("PRUNE.TYPE", cfg.PRUNE.TYPE, "config")
    return cfg.PRUNE.TYPE != "no"


def check_sparsity(cfg: CfgNode) -> None:
    """ConfigError now, rather than mid-run, for an unknown PRUNE.TYPE, SR_SCHEDULE or SR_PENALTY."""
    sparsity_enabled(cfg)
    sr_at(cfg, 0)
    check_choice("PRUNE.SR_PENALTY", cfg.PRUNE.SR_PENALTY, "config")


def sr_at(cfg: CfgNode, iteration: int) -> float:
    """The sparsity rate at an iteration under PRUNE.SR_SCHEDULE."""
    prune = cfg.PRUNE
    check_choice("PRUNE.SR_SCHEDULE", prune.SR_SCHEDULE, "config")
    if prune.SR_SCHEDULE == "step" and iteration >= prune.SR_STEP_AT * cfg.SOLVER.MAX_ITER:
        return prune.SR * prune.SR_STEP_FACTOR
    return prune.SR


def penalty_direction(gamma: torch.Tensor, penalty: str) -> torch.Tensor:
    """The gradient direction of PRUNE.SR_PENALTY on one layer's γ: sign(γ) (`l1`), or sign(γ) less its
    component along γ (`hoyer`: scale-free; any other name: see check_sparsity)."""
    sign = torch.sign(gamma)
    if penalty == "l1":
        return sign
    return sign - gamma * (gamma.abs().sum() / gamma.pow(2).sum().clamp_min(1e-12))


def prunable_bns(model: nn.Module, mode: str) -> dict[int, nn.BatchNorm2d]:
    """The BatchNorm of every prunable layer of an SSD, by cfg layer index."""
    net = cast("SSD", getattr(model, "module", model))  # unwrap DistributedDataParallel
    return {i: cast(nn.BatchNorm2d, net.backbone.module_list[i].bn)
            for i in prunable_layers(net.backbone.defs, mode, net.cfg.INPUT.CHANNELS)}


def measured_layer_ms(model: nn.Module, table: Path | None = None) -> dict[int | str, float]:
    """Median CPU ms of every backbone layer and of the head (batch 1, on a copy of the model), read from `table`
    when it exists, else measured and written there."""
    if table is not None and table.is_file():
        stored = json.loads(table.read_text())["ms"]
        return {int(k) if k.isdigit() else k: v for k, v in stored.items()}
    net = cast("SSD", copy.deepcopy(getattr(model, "module", model)).cpu())
    with torch.random.fork_rng():
        ms = layer_latency(net, net.cfg.INPUT.IMAGE_SIZE)
    if table is not None:
        table.parent.mkdir(parents=True, exist_ok=True)
        write_json({"cpu": cpu_flags(), "threads": torch.get_num_threads(),
                           "ms": {str(k): v for k, v in ms.items()}}, table)
    return ms


def sr_weights(model: nn.Module, mode: str, weight: str, table: Path | None = None) -> dict[int, float]:
    """Per prunable layer, the factor on SR: 1 for `none`; for `params`, `macs` or `latency`, what one of its
    channels carries over the mean across all prunable channels (latency: see measured_layer_ms)."""
    check_choice("PRUNE.SR_WEIGHT", weight, "config")
    bns = prunable_bns(model, mode)
    if weight == "none":
        return dict.fromkeys(bns, 1.0)
    net = getattr(model, "module", model)
    spec = ModelSpec.from_model(net)
    speed = layer_speed(spec, measured_layer_ms(net, table)) if weight == "latency" else None
    cost = channel_cost(spec, mode, weight, speed)
    widths = {i: bn.num_features for i, bn in bns.items()}
    mean = sum(cost[i] * widths[i] for i in bns) / sum(widths.values())
    return {i: cost[i] / mean for i in bns}


def target_plan(model: nn.Module, cfg: CfgNode) -> PrunePlan:
    """The plan that keeps PRUNE.SR_TARGET of the MACs, ranking |γ| under PRUNE.GAMMA_SCALE as `ssdlab prune` does
    (kept widths rounded up to PRUNE.ROUND_TO, as `prune --regular 1`)."""
    net = cast("SSD", getattr(model, "module", model))
    return make_budget_plan(net, cfg.PRUNE.SR_TARGET, cfg.PRUNE.TYPE, cfg.PRUNE.ROUND_TO > 1, cfg.PRUNE.ROUND_TO,
                            cfg.PRUNE.GAMMA_SCALE)


def removed_masks(result: PrunePlan, bns: dict[int, nn.BatchNorm2d]) -> dict[int, torch.Tensor]:
    """Per prunable BN, 1.0 for the channels a plan removes and 0.0 for those it keeps."""
    masks = {}
    for i, bn in bns.items():
        removed = np.ones(bn.num_features, dtype=np.float32)
        removed[result.kept_out(i)] = 0.0
        masks[i] = torch.from_numpy(removed).to(bn.weight.device)
    return masks


class SparsityHook:
    """The after-backward hook that adds SR · w · d(γ) to the prunable γ gradients (w: PRUNE.SR_WEIGHT; d: the
    direction of PRUNE.SR_PENALTY, sign(γ) for L1)."""

    def __init__(self, cfg: CfgNode, model: nn.Module):
        check_sparsity(cfg)
        self.cfg = cfg
        self.bns = prunable_bns(model, cfg.PRUNE.TYPE)
        self.weights = sr_weights(model, cfg.PRUNE.TYPE, cfg.PRUNE.SR_WEIGHT,
                                  Path(cfg.OUTPUT_DIR) / "layer_latency.json")
        self.target: PrunePlan | None = None  # the budget plan of PRUNE.SR_TARGET, when set
        self.masks: dict[int, torch.Tensor] = {}

    def replans(self, iteration: int) -> bool:
        """True at the iterations where PRUNE.SR_TARGET plans again (every REPLAN_EVERY, in the first REPLAN_UNTIL)."""
        return iteration % REPLAN_EVERY == 0 and iteration < REPLAN_UNTIL * self.cfg.SOLVER.MAX_ITER

    @torch.no_grad()
    def __call__(self, model: nn.Module, iteration: int) -> None:
        """γ.grad += SR · w · d(γ) for every prunable BN."""
        rate, penalty = sr_at(self.cfg, iteration), self.cfg.PRUNE.SR_PENALTY
        if self.cfg.PRUNE.SR_TARGET and (self.target is None or self.replans(iteration)):
            self.target = target_plan(model, self.cfg)
            self.masks = removed_masks(self.target, self.bns)
        for i, bn in self.bns.items():
            if bn.weight.grad is not None:
                direction = penalty_direction(bn.weight, penalty)
                if self.target is not None:
                    direction = direction * self.masks[i]
                bn.weight.grad.add_(direction, alpha=rate * self.weights[i])


class SparsityPlugin(Plugin):
    """Sparse training: the SparsityHook after every backward pass, the prunable |γ| logged at each evaluation."""

    def __init__(self, cfg: CfgNode):
        check_sparsity(cfg)  # before the model is built
        self.cfg = cfg
        self.hook: SparsityHook | None = None

    def setup(self, model: nn.Module, device: torch.device) -> None:
        """Find the prunable BN layers and their SR weights."""
        self.hook = SparsityHook(self.cfg, model)

    def after_backward(self, model: nn.Module, iteration: int) -> None:
        """γ.grad += SR · w · d(γ)."""
        assert self.hook is not None, "setup() makes the hook"
        self.hook(model, iteration)

    def eval_record(self, model: nn.Module) -> dict:
        """{"gamma": |γ| per prunable layer}, and with PRUNE.SR_TARGET the percent and MACs share of its plan."""
        record: dict = {"gamma": gamma_record(model, self.cfg.PRUNE.TYPE)}
        hook = self.hook
        if hook is not None and hook.target is not None:
            target = hook.target
            record["target"] = {"percent": round(target.percent, 4), "macs": target.macs_after / target.macs_before,
                                "kept": {str(i): len(target.kept_out(i)) for i in hook.bns}}
        return record


def gamma_record(model: nn.Module, mode: str, decimals: int = 5) -> dict[str, list[float]]:
    """|γ| of every prunable layer (layer index as a string -> values), for the metrics log."""
    return {str(i): np.round(bn.weight.detach().abs().cpu().numpy(), decimals).tolist()
            for i, bn in prunable_bns(model, mode).items()}
