"""BN fusion: fold every BatchNorm into the conv before it, for inference and export.

In eval mode BN is the affine map y = γ·(x − μ)/√(σ² + ε) + β per channel, so a conv followed
by BN equals one conv with

    W' = W · γ/√(σ² + ε)      b' = β + (b − μ) · γ/√(σ² + ε)     (b = 0 for a bias-less conv)

Backbone layers, extras and the SSDLite head's depthwise convs are fused. Quantized layers stay
quantized: the folded weight is quantized (fold, then quantize); an IAO layer, already folded
during QAT, becomes a quantized conv with exactly its eval-mode weight and bias.

    fused = fuse_model(model)        # a copy; the model itself is untouched
"""
from __future__ import annotations

import copy
from collections import OrderedDict
from dataclasses import replace
from typing import TYPE_CHECKING, cast

import torch
from torch import nn

from ssdlab.model.heads import BoxHead
from ssdlab.quant.layers import IAOConvBN, QuantConv2d, QuantSpec, conv_geometry

if TYPE_CHECKING:
    from ssdlab.model.ssd import SSD


def _conv_like(conv: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor) -> nn.Conv2d:
    """A biased Conv2d with conv's geometry holding the given weight and bias."""
    out = nn.Conv2d(conv.in_channels, conv.out_channels, *conv_geometry(conv), bias=True).to(weight.device)
    assert out.bias is not None  # bias=True
    out.weight.copy_(weight)
    out.bias.copy_(bias)
    return out


def _keep_input_quantizer(fused: nn.Conv2d, source: QuantConv2d | IAOConvBN, spec: QuantSpec,
                          weight_bits: int) -> QuantConv2d:
    """Wrap a fused conv so that its input is quantized as before (its weight as `spec` says)."""
    quantized = QuantConv2d(fused, spec)
    quantized.act_quant.load_state_dict(source.act_quant.state_dict())
    quantized.weight_bits = weight_bits
    return quantized


@torch.no_grad()
def fuse_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """One conv (with bias) computing conv → BN (eval).

    A DoReFa/BWN QuantConv2d keeps its input quantizer; its weight becomes the quantized weight
    scaled per output channel by γ/√(σ²+ε) (k-bit codes times a per-channel multiplier), so the
    fused layer computes exactly what the trained one did.
    """
    running_mean, running_var = cast(torch.Tensor, bn.running_mean), cast(torch.Tensor, bn.running_var)  # eval: set
    scale = bn.weight / torch.sqrt(running_var + bn.eps)
    weight = conv.quantized_weight() if isinstance(conv, QuantConv2d) else conv.weight
    bias = conv.bias if conv.bias is not None else torch.zeros_like(running_mean)
    fused = _conv_like(conv, weight * scale.view(-1, 1, 1, 1), bn.bias + (bias - running_mean) * scale)
    if isinstance(conv, QuantConv2d):
        return _keep_input_quantizer(fused, conv, replace(conv.spec, wbits=32), conv.weight_bits)
    return fused


@torch.no_grad()
def fuse_iao(layer: IAOConvBN) -> nn.Sequential:
    """An IAO conv+BN as a quantized conv with its folded weight and bias (fold, then quantize: same output)."""
    bn = layer.bn
    _, bias = layer.folded()
    fused = _conv_like(layer.conv, layer.conv.weight * (bn.weight / torch.sqrt(bn.running_var + bn.eps)).view(-1, 1, 1, 1),
                       bias)
    parts: OrderedDict[str, nn.Module] = OrderedDict(conv=_keep_input_quantizer(fused, layer, layer.spec,
                                                                                layer.spec.weight_bits))
    if hasattr(layer, "act"):
        parts["act"] = layer.act
    return nn.Sequential(parts)


def _fuse_block(block: nn.Module) -> nn.Module:
    """A backbone layer (conv → BN → act) with its BN folded; other layers unchanged."""
    if isinstance(block, IAOConvBN):
        return fuse_iao(block)
    if not (isinstance(block, nn.Sequential) and hasattr(block, "bn")):
        return block
    parts: OrderedDict[str, nn.Module] = OrderedDict(conv=fuse_conv_bn(cast(nn.Conv2d, block.conv),
                                                                       cast(nn.BatchNorm2d, block.bn)))
    if hasattr(block, "act"):
        parts["act"] = cast(nn.Module, block.act)
    return nn.Sequential(parts)


def _fuse_head(head: nn.Module) -> nn.Module:
    """An SSDLite separable predictor with its depthwise conv and BN fused; plain convs unchanged."""
    if isinstance(head, nn.Conv2d):
        return head
    conv, bn = cast(nn.Conv2d, head.conv), cast(nn.BatchNorm2d, head.bn)
    return nn.Sequential(OrderedDict(conv=fuse_conv_bn(conv, bn), act=cast(nn.Module, head.act),
                                     pointwise=cast(nn.Module, head.pointwise)))


def fuse_model(model: SSD) -> SSD:
    """An eval-mode copy of an SSD with every conv+BN fused (backbone, extras, heads)."""
    fused = copy.deepcopy(model).eval()
    layers = fused.backbone.module_list
    for i, block in enumerate(layers):
        layers[i] = _fuse_block(block)
    box_head = cast(BoxHead, fused.box_head)
    for heads in (box_head.cls_headers, box_head.reg_headers):
        for level, head in enumerate(heads):
            heads[level] = _fuse_head(head)
    setattr(fused, "bn_fused", True)  # a flag: Module.__setattr__ is typed for tensors and modules
    return fused.eval()  # the new layers start in training mode


def count_batchnorms(model: nn.Module) -> int:
    """Number of BatchNorm layers left in a model."""
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
