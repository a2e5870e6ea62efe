"""The course's lessons as training plugins, chosen from a config in this one place.

    PRUNE.TYPE (not no)        -> SparsityPlugin: L1 on the prunable BN γ (ssdlab.prune.sparsity)
    DISTILL.TEACHER (set)      -> DistillationPlugin: a teacher's outputs as extra loss terms (ssdlab.prune.distill)
    QUANTIZATION.FREEZE_*_ITER -> FreezePlugin: freeze observers / BN statistics in QAT (ssdlab.quant.apply)

Quantization itself is part of the model (ssdlab.model.build applies its QuantSpec), not a plugin.
"""
from __future__ import annotations

from ssdlab.config import CfgNode
from ssdlab.engine.plugins import Plugin
from ssdlab.prune.distill import DistillationPlugin
from ssdlab.prune.sparsity import SparsityPlugin, sparsity_enabled
from ssdlab.quant.apply import FreezePlugin, freezes


def plugins_from_config(cfg: CfgNode) -> list[Plugin]:
    """The plugins a config asks for, in the order they act."""
    plugins: list[Plugin] = []
    if sparsity_enabled(cfg):
        plugins.append(SparsityPlugin(cfg))
    if cfg.DISTILL.TEACHER:
        plugins.append(DistillationPlugin(cfg))
    if freezes(cfg):
        plugins.append(FreezePlugin(cfg))
    return plugins
