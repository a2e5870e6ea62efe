"""A backbone built layer by layer from a darknet-style cfg (see ssdlab.model.cfg).

Every cfg layer becomes one entry of `module_list`, in cfg order, so layer i of
the file is `module_list[i]`: pruning, quantization and export all address
layers by that index.
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import cast

import torch
from torch import nn

from ssdlab.model.cfg import backbone_end, cfg_file, check_layers, feature_layers, read_cfg


class L2Norm(nn.Module):
    """Normalise each position's channel vector to unit L2 norm, then scale by a learned weight per channel."""

    def __init__(self, channels: int, scale: float = 20.0, eps: float = 1e-10):
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels,), scale))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x / (||x||_2 over channels + eps) * weight."""
        norm = x.pow(2).sum(dim=1, keepdim=True).sqrt() + self.eps
        return x / norm * self.weight.view(1, -1, 1, 1)


class Shortcut(nn.Module):
    """Residual add: the previous layer's output plus the output of layer `source` (no activation)."""

    def __init__(self, source: int):
        super().__init__()
        self.source = source

    def forward(self, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        """x + other."""
        return x + other

    def extra_repr(self) -> str:
        """Shown by print(model)."""
        return f"source={self.source}"


def make_activation(name: str) -> nn.Module | None:
    """The module for a cfg activation name; None for linear."""
    if name == "relu":
        return nn.ReLU()
    if name == "relu6":
        return nn.ReLU6()
    if name == "leaky":
        return nn.LeakyReLU(0.1)
    if name == "h_swish":
        return nn.Hardswish()
    return None


def make_conv(layer: dict, in_channels: int) -> nn.Sequential:
    """conv -> optional bn -> optional act for a [convolutional] or [depthwise] layer."""
    groups = in_channels if layer["type"] == "depthwise" else 1
    parts: OrderedDict[str, nn.Module] = OrderedDict(
        conv=nn.Conv2d(in_channels, layer["filters"], layer["size"], stride=layer["stride"], padding=layer["pad"],
                       dilation=layer["dilation"], groups=groups, bias=bool(layer["bias"])))
    if layer["batch_normalize"]:
        parts["bn"] = nn.BatchNorm2d(layer["filters"])
    act = make_activation(layer["activation"])
    if act is not None:
        parts["act"] = act
    return nn.Sequential(parts)


def make_layer(layer: dict, index: int, in_channels: int) -> nn.Module:
    """The module for one cfg layer."""
    if layer["type"] in ("convolutional", "depthwise"):
        return make_conv(layer, in_channels)
    if layer["type"] == "maxpool":
        return nn.MaxPool2d(layer["size"], layer["stride"], padding=layer["pad"], ceil_mode=bool(layer["ceil_mode"]))
    return Shortcut(index + layer["from"])


def init_weights(module: nn.Module) -> None:
    """He-normal conv weights, zero biases, BN gamma 1 and beta 0 (the usual init for ReLU nets with BN)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def zero_residual_gammas(module_list: nn.ModuleList) -> None:
    """BN γ = 0 in the last layer of each residual branch, so every block starts as the identity.

    Goyal et al. 2017 ("zero-γ"): the shortcut carries the signal while the branch learns, which speeds
    up early training (the course's residual model: benchmarks/RESULTS.md).
    """
    for index, module in enumerate(module_list):
        branch_end = module_list[index - 1] if isinstance(module, Shortcut) else None
        if isinstance(branch_end, nn.Sequential) and hasattr(branch_end, "bn"):
            nn.init.zeros_(cast(nn.BatchNorm2d, branch_end.bn).weight)


class CfgBackbone(nn.Module):
    """The layers of a cfg as a module whose forward returns the head feature maps, level 0 first."""

    def __init__(self, layers: list[dict], in_channels: int = 3, source: str = "<cfg>"):
        super().__init__()
        self.defs = layers
        self.channels: list[int] = check_layers(layers, in_channels, source)
        inputs = [in_channels] + self.channels[:-1]
        self.module_list = nn.ModuleList(make_layer(layer, i, inputs[i]) for i, layer in enumerate(layers))
        self.l2norms = nn.ModuleDict({str(i): L2Norm(self.channels[i]) for i, layer in enumerate(layers)
                                      if layer.get("feature") == "l2_norm"})
        self.feature_layers: list[int] = feature_layers(layers, source)
        self.out_channels: list[int] = [self.channels[i] for i in self.feature_layers]
        self.backbone_end: int = backbone_end(layers)
        self.shortcut_sources: set[int] = {m.source for m in self.module_list if isinstance(m, Shortcut)}
        init_weights(self.module_list)
        zero_residual_gammas(self.module_list)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Run every layer in order; collect the feature layers' outputs (L2Norm applied where set)."""
        kept: dict[int, torch.Tensor] = {}
        features: dict[int, torch.Tensor] = {}
        for index, module in enumerate(self.module_list):
            x = module(x, kept[module.source]) if isinstance(module, Shortcut) else module(x)
            if index in self.shortcut_sources:
                kept[index] = x
            if str(index) in self.l2norms:
                features[index] = self.l2norms[str(index)](x)
            elif self.defs[index].get("feature"):
                features[index] = x
        return [features[i] for i in self.feature_layers]


def load_backbone_cfg(path: str | Path) -> tuple[list[dict], str]:
    """The parsed layers and the raw text of a backbone .cfg file."""
    layers = read_cfg(path)
    return layers, cfg_file(path).read_text(encoding="utf-8")  # read_cfg checked it is text
