"""Turn a float SSD into a quantization-aware one, as QUANTIZATION.* says.

Backbone layers marked `quantization=1` in the cfg are swapped: conv+BN layers become
`IAOConvBN` under IAO, and under DoReFa/BWN their conv becomes a `QuantConv2d`; with
QUANTIZATION.FINAL the prediction-head convs become `QuantConv2d` too (SSDLite heads keep their
BN in float); under IAO their outputs (the class logits and box offsets) are quantized as well.
Weights and BN state are kept, so a float checkpoint continues as QAT.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Iterable

import torch
from torch import nn

from ssdlab.config import CfgNode
from ssdlab.engine.plugins import Plugin
from ssdlab.errors import QuantError
from ssdlab.model.cfg import check_follows_recipe, parse_cfg, read_backbone_text, write_cfg
from ssdlab.quant.layers import ActQuant, IAOConvBN, QuantConv2d, QuantSpec

CONV_TYPES = ("convolutional", "depthwise")


def quant_spec(cfg: CfgNode, defs: list[dict] | None = None) -> QuantSpec | None:
    """The checked QUANTIZATION setting for the conv layers `defs` marks quantization=1 (default: those of
    MODEL.BACKBONE.CFG) and, under QUANTIZATION.FINAL, the heads; None for TYPE 'no'."""
    qc = cfg.QUANTIZATION
    if qc.TYPE == "no":
        return None
    setting = QuantSpec(qc.TYPE, qc.WBITS, qc.ABITS, qc.DOREFA_ACT_SCALE, qc.IAO_MODE)  # keys checked before any file
    defs = defs if defs is not None else parse_cfg(read_backbone_text(cfg)[0])
    layers = tuple(i for i, layer in enumerate(defs) if layer.get("quantization", 0) and layer["type"] in CONV_TYPES)
    if not layers and not qc.FINAL:
        raise QuantError(f"QUANTIZATION.TYPE is {qc.TYPE} but no cfg layer has quantization=1 and "
                         "QUANTIZATION.FINAL is False, so nothing would be quantized; use a *_quan.cfg backbone "
                         "(e.g. course_plain_quan.cfg) or set QUANTIZATION.FINAL True")
    return replace(setting, layers=layers, heads=bool(qc.FINAL))


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


def quantize_model(model: nn.Module, spec: QuantSpec | None) -> nn.Module:
    """Swap the spec's layers of a float SSD for quantization-aware ones in place (None: left float)."""
    if spec is None:
        return model
    if model.quant_spec is not None:
        raise QuantError("the model is quantized already; quantize a float model")
    defs = model.backbone.defs
    for i in spec.layers:
        if i >= len(defs) or defs[i]["type"] not in CONV_TYPES:
            raise QuantError(f"the quantization spec names layer {i}, which is not a conv layer of this "
                             f"{len(defs)}-layer backbone; it was made for another cfg")
        model.backbone.module_list[i] = _quantize_block(model.backbone.module_list[i], spec)
    if spec.heads:
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


class FreezePlugin(Plugin):
    """Freezes the observers / IAO BN statistics at QUANTIZATION.FREEZE_*_ITER."""

    def __init__(self, cfg: CfgNode):
        self.observer_iter = cfg.QUANTIZATION.FREEZE_OBSERVER_ITER
        self.bn_iter = cfg.QUANTIZATION.FREEZE_BN_ITER

    def after_backward(self, model: nn.Module, iteration: int) -> None:
        """Set the frozen flags once their iteration is reached."""
        set_frozen(model, observers=True if 0 <= self.observer_iter <= iteration else None,
                   bn=True if 0 <= self.bn_iter <= iteration else None)


def freezes(cfg: CfgNode) -> bool:
    """True when a quantized run sets a freeze iteration."""
    qc = cfg.QUANTIZATION
    return qc.TYPE != "no" and (qc.FREEZE_OBSERVER_ITER >= 0 or qc.FREEZE_BN_ITER >= 0)


def quantization_flags(cfg_text: str, cfg: CfgNode) -> str:
    """For a fine-tune from a checkpoint: its cfg with the recipe cfg's quantization=1 marks, layer by layer.

    The checkpoint's layers (pruned ones too: same layer types, possibly a prefix) keep their widths;
    only the marks come from MODEL.BACKBONE.CFG; a start of another network is refused (check_follows_recipe).
    Without quantization the text is returned as is.
    """
    marks = check_follows_recipe(cfg_text, cfg)
    if cfg.QUANTIZATION.TYPE == "no":
        return cfg_text
    own = parse_cfg(cfg_text)
    if all(a.get("quantization", 0) == b.get("quantization", 0) for a, b in zip(own, marks)):
        return cfg_text
    for layer, marked in zip(own, marks):
        if "quantization" in marked:
            layer["quantization"] = marked["quantization"]
    return write_cfg(own)
