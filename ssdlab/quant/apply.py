"""Turn a float SSD into a quantization-aware one, as QUANTIZATION.* says.

Backbone layers marked `quantization=1` in the cfg are swapped: conv+BN layers become
`IAOConvBN` under IAO, and under DoReFa/BWN their conv becomes a `QuantConv2d`; with
QUANTIZATION.FINAL the prediction-head convs become `QuantConv2d` too (SSDLite heads keep their
BN in float); under IAO their outputs (the class logits and box offsets) are quantized as well.
Weights and BN state are kept, so a float checkpoint continues as QAT.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from ssdlab.config import CfgNode
from ssdlab.errors import QuantError
from ssdlab.quant.layers import ActQuant, IAOConvBN, QuantConv2d, QuantSpec

# allowed WBITS / ABITS per type (32 = leave that side in float)
BITS = {
    "dorefa": (tuple(range(2, 17)) + (32,), tuple(range(2, 17)) + (32,)),
    "IAO": (tuple(range(2, 17)) + (32,), tuple(range(2, 17)) + (32,)),
    "BWN": ((2, 3, 32), (2, 32)),
}
IAO_MODES = ("symmetric", "asymmetric")


def _allowed(values: tuple[int, ...]) -> str:
    """'2..16 or 32' style text for an error message."""
    run = [v for v in values if v != 32]
    return (f"{run[0]}..{run[-1]}" if len(run) > 2 else ", ".join(map(str, run))) + " or 32 (float)"


def quant_spec(cfg: CfgNode) -> QuantSpec | None:
    """The checked QUANTIZATION setting, or None for TYPE 'no'."""
    qc = cfg.QUANTIZATION
    if qc.TYPE == "no":
        return None
    if qc.TYPE not in BITS:
        raise QuantError(f"QUANTIZATION.TYPE = {qc.TYPE!r} is unknown; use no, {', '.join(BITS)}")
    wbits, abits = BITS[qc.TYPE]
    if qc.WBITS not in wbits:
        raise QuantError(f"QUANTIZATION.WBITS = {qc.WBITS} is not allowed for {qc.TYPE}; use {_allowed(wbits)}"
                         + (" (2 = binary, 3 = ternary)" if qc.TYPE == "BWN" else ""))
    if qc.ABITS not in abits:
        raise QuantError(f"QUANTIZATION.ABITS = {qc.ABITS} is not allowed for {qc.TYPE}; use {_allowed(abits)}"
                         + (" (2 = binary activations)" if qc.TYPE == "BWN" else ""))
    if qc.IAO_MODE not in IAO_MODES:
        raise QuantError(f"QUANTIZATION.IAO_MODE = {qc.IAO_MODE!r} is unknown; use one of {', '.join(IAO_MODES)}")
    return QuantSpec(qc.TYPE, qc.WBITS, qc.ABITS, qc.DOREFA_ACT_SCALE, qc.IAO_MODE)


def _quantize_block(block: nn.Sequential, spec: QuantSpec) -> nn.Module:
    """One backbone conv layer made quantization-aware."""
    if spec.kind == "IAO" and hasattr(block, "bn"):
        return IAOConvBN(block, spec)
    block.conv = QuantConv2d(block.conv, spec)
    return block


def _quantize_head(head: nn.Module, spec: QuantSpec) -> nn.Module:
    """A head predictor with its convs quantized (SSDLite: depthwise and pointwise)."""
    if isinstance(head, nn.Conv2d):
        return QuantConv2d(head, spec, output=True)
    head.conv = QuantConv2d(head.conv, spec)
    head.pointwise = QuantConv2d(head.pointwise, spec, output=True)
    return head


def quantize_model(model: nn.Module, cfg: CfgNode) -> nn.Module:
    """Swap the layers of an SSD for quantization-aware ones in place (no-op for TYPE 'no')."""
    spec = quant_spec(cfg)
    if spec is None or getattr(model, "quant_spec", None) is not None:
        return model
    marked = [i for i, layer in enumerate(model.backbone.defs)
              if layer.get("quantization", 0) and layer["type"] in ("convolutional", "depthwise")]
    if not marked and not cfg.QUANTIZATION.FINAL:
        raise QuantError(f"QUANTIZATION.TYPE is {spec.kind} but no cfg layer has quantization=1 and "
                         "QUANTIZATION.FINAL is False, so nothing would be quantized; use a *_quan.cfg backbone "
                         "(e.g. course_plain_quan.cfg) or set QUANTIZATION.FINAL True")
    for i in marked:
        model.backbone.module_list[i] = _quantize_block(model.backbone.module_list[i], spec)
    if cfg.QUANTIZATION.FINAL:
        for heads in (model.box_head.cls_headers, model.box_head.reg_headers):
            for level, head in enumerate(heads):
                heads[level] = _quantize_head(head, spec)
    model.quant_spec = spec
    return model


def set_frozen(model: nn.Module, observers: bool | None = None, bn: bool | None = None) -> None:
    """Freeze (or unfreeze) the activation-range observers and the IAO BN statistics."""
    for module in model.modules():
        if observers is not None and isinstance(module, ActQuant):
            module.frozen = observers
        if bn is not None and isinstance(module, IAOConvBN):
            module.bn_frozen = bn


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable[torch.Tensor]) -> nn.Module:
    """Observe the activation ranges of a quantized SSD on image batches; everything else in eval mode (BN
    statistics untouched). Returns the model in eval mode."""
    model.eval()
    observers = [m for m in model.modules() if isinstance(m, ActQuant)]
    for observer in observers:
        observer.train()
    for images in batches:
        model.forward_raw(images)
    return model.eval()


class FreezeHook:
    """After-backward hook: freeze observers / BN statistics at QUANTIZATION.FREEZE_*_ITER."""

    def __init__(self, cfg: CfgNode):
        self.observer_iter = cfg.QUANTIZATION.FREEZE_OBSERVER_ITER
        self.bn_iter = cfg.QUANTIZATION.FREEZE_BN_ITER

    def __call__(self, model: nn.Module, iteration: int) -> None:
        """Set the frozen flags once their iteration is reached."""
        set_frozen(model, observers=True if 0 <= self.observer_iter <= iteration else None,
                   bn=True if 0 <= self.bn_iter <= iteration else None)


def quant_hooks(cfg: CfgNode) -> list[FreezeHook]:
    """[FreezeHook] when a freeze iteration is set for a quantized run."""
    qc = cfg.QUANTIZATION
    return [FreezeHook(cfg)] if qc.TYPE != "no" and (qc.FREEZE_OBSERVER_ITER >= 0 or qc.FREEZE_BN_ITER >= 0) else []
