"""Prediction heads: per head level, one conv predicting class scores and one predicting box offsets.

A level with b boxes per location and C classes outputs b*C class channels and
b*4 box channels at every position. Channel index = box * C + class (or
box * 4 + coordinate), so permuting NCHW -> NHWC and reshaping to [B, -1, C]
orders the predictions row -> column -> box, and concatenating the levels gives
level -> row -> column -> box: the order of the priors.

Both heads register `cls_headers` before `reg_headers` (the original SSD code's state-dict
order, which the weight export keeps). Convs start Xavier-uniform with zero
biases (the original SSD code's choice); BatchNorm starts at gamma 1, beta 0.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor, nn


def flatten_level(x: Tensor, per_box: int) -> Tensor:
    """[B, b*per_box, H, W] -> [B, H*W*b, per_box], ordered row -> column -> box."""
    return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, per_box)


def init_head(module: nn.Module) -> None:
    """Xavier-uniform conv weights and zero conv biases."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class BoxHead(nn.Module):
    """Shared forward of the SSD heads: run each level's class and box predictor and flatten."""

    cls_headers: nn.ModuleList
    reg_headers: nn.ModuleList

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes

    def forward(self, features: list[Tensor]) -> tuple[Tensor, Tensor]:
        """(cls_logits [B, N, C], bbox_pred [B, N, 4]) ordered level -> row -> column -> box."""
        cls_logits = [flatten_level(head(f), self.num_classes) for head, f in zip(self.cls_headers, features)]
        bbox_pred = [flatten_level(head(f), 4) for head, f in zip(self.reg_headers, features)]
        return torch.cat(cls_logits, dim=1), torch.cat(bbox_pred, dim=1)


class SSDHead(BoxHead):
    """The SSD head: per level a 3x3 pad-1 conv for the classes and one for the boxes."""

    def __init__(self, in_channels: list[int], boxes_per_location: list[int], num_classes: int):
        super().__init__(num_classes)
        self.cls_headers = nn.ModuleList(nn.Conv2d(c, b * num_classes, 3, padding=1)
                                         for c, b in zip(in_channels, boxes_per_location))
        self.reg_headers = nn.ModuleList(nn.Conv2d(c, b * 4, 3, padding=1)
                                         for c, b in zip(in_channels, boxes_per_location))
        init_head(self)


def separable_conv(in_channels: int, out_channels: int) -> nn.Sequential:
    """Depthwise 3x3 (`conv`, with a bias as in the original SSD code) -> BatchNorm (`bn`) -> ReLU6 (`act`) -> 1x1 conv
    (`pointwise`)."""
    return nn.Sequential(OrderedDict(
        conv=nn.Conv2d(in_channels, in_channels, 3, padding=1, groups=in_channels),
        bn=nn.BatchNorm2d(in_channels),
        act=nn.ReLU6(),
        pointwise=nn.Conv2d(in_channels, out_channels, 1),
    ))


def lite_predictor(in_channels: int, out_channels: int, last: bool) -> nn.Module:
    """A separable conv predictor, or a plain 1x1 conv for the last level."""
    return nn.Conv2d(in_channels, out_channels, 1) if last else separable_conv(in_channels, out_channels)


class SSDLiteHead(BoxHead):
    """The SSDLite head: separable 3x3 predictors, plain 1x1 convs from level `separable` on.

    `separable` = -1 (the original SSD code's layout) makes only the last level plain; a pruned model whose
    last levels were dropped keeps its remaining separable predictors by passing the count.
    """

    def __init__(self, in_channels: list[int], boxes_per_location: list[int], num_classes: int,
                 separable: int = -1):
        super().__init__(num_classes)
        separable = len(in_channels) - 1 if separable < 0 else separable
        self.cls_headers = nn.ModuleList(lite_predictor(c, b * num_classes, k >= separable)
                                         for k, (c, b) in enumerate(zip(in_channels, boxes_per_location)))
        self.reg_headers = nn.ModuleList(lite_predictor(c, b * 4, k >= separable)
                                         for k, (c, b) in enumerate(zip(in_channels, boxes_per_location)))
        init_head(self)
