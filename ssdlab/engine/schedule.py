"""Learning-rate schedules: linear warm-up, then multi-step decay (the original SSD code's) or cosine."""
from __future__ import annotations

import bisect
import math

import torch

from ssdlab.config import CfgNode, check_choice
from ssdlab.errors import ConfigError


class WarmupSchedule:
    """lr factor at an iteration: warm-up from WARMUP_FACTOR to 1, times the decay."""

    def __init__(self, kind: str, max_iter: int, steps: list[int], gamma: float,
                 warmup_factor: float, warmup_iters: int):
        check_choice("SOLVER.SCHEDULER", kind, "config")
        if max_iter < 1:
            raise ConfigError(f"SOLVER.MAX_ITER = {max_iter}; train for at least 1 iteration")
        if list(steps) != sorted(steps):
            raise ConfigError(f"SOLVER.LR_STEPS = {steps} must be increasing")
        self.kind, self.max_iter, self.steps, self.gamma = kind, max_iter, list(steps), gamma
        self.warmup_factor, self.warmup_iters = warmup_factor, warmup_iters

    def __call__(self, iteration: int) -> float:
        """Multiplier of the base lr at this iteration (0-based)."""
        warmup = 1.0
        if iteration < self.warmup_iters:
            alpha = iteration / self.warmup_iters
            warmup = self.warmup_factor * (1 - alpha) + alpha
        if self.kind == "cosine":
            return warmup * 0.5 * (1 + math.cos(math.pi * min(iteration, self.max_iter) / self.max_iter))
        return warmup * self.gamma ** bisect.bisect_right(self.steps, iteration)


def build_optimizer(cfg: CfgNode, model: torch.nn.Module) -> torch.optim.Optimizer:
    """SGD with momentum (the original SSD code's) or AdamW, over every trainable parameter.

    Fused (one kernel for all parameters) on the CPU and CUDA: the same update, several times faster
    than the per-parameter loop torch uses by default on the CPU.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    solver = cfg.SOLVER
    fused = bool(params) and all(p.device.type in ("cpu", "cuda") for p in params)
    check_choice("SOLVER.OPTIMIZER", solver.OPTIMIZER, "config")
    if solver.OPTIMIZER == "SGD":
        return torch.optim.SGD(params, lr=solver.LR, momentum=solver.MOMENTUM,
                               weight_decay=solver.WEIGHT_DECAY, fused=fused)
    return torch.optim.AdamW(params, lr=solver.LR, weight_decay=solver.WEIGHT_DECAY, fused=fused)


def build_scheduler(cfg: CfgNode, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR stepping once per iteration with the configured warm-up and decay."""
    s = cfg.SOLVER
    schedule = WarmupSchedule(s.SCHEDULER, s.MAX_ITER, s.LR_STEPS, s.GAMMA, s.WARMUP_FACTOR, s.WARMUP_ITERS)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
