"""SSD prior (default) boxes: a fixed set of boxes tiled over every head level.

For level k with an f x f feature map, `scale = IMAGE_SIZE / STRIDES[k]` and the
cell in row i, column j is centred at ((j + 0.5) / scale, (i + 0.5) / scale).
Each cell gets, in this order: a square of side MIN_SIZES[k], a square of side
sqrt(MIN_SIZES[k] * MAX_SIZES[k]), then for every aspect ratio r the pair
(w*sqrt(r), h/sqrt(r)) and (w/sqrt(r), h*sqrt(r)) with w = h = MIN_SIZES[k].
Sizes are divided by IMAGE_SIZE, so priors are (cx, cy, w, h) in [0, 1],
ordered level -> row -> column -> box, the same order the heads predict in.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ssdlab.errors import ConfigError

_LIST_KEYS = ("FEATURE_MAPS", "STRIDES", "MIN_SIZES", "MAX_SIZES", "ASPECT_RATIOS", "BOXES_PER_LOCATION")


def check_priors_cfg(priors_cfg) -> None:
    """Raise ConfigError when the MODEL.PRIORS lists disagree in length or in boxes per location."""
    levels = len(priors_cfg.FEATURE_MAPS)
    for key in _LIST_KEYS:
        if len(priors_cfg[key]) != levels:
            raise ConfigError(
                f"MODEL.PRIORS.{key} has {len(priors_cfg[key])} entries but MODEL.PRIORS.FEATURE_MAPS has "
                f"{levels}; give every MODEL.PRIORS list one entry per head level")
    for k, (ratios, boxes) in enumerate(zip(priors_cfg.ASPECT_RATIOS, priors_cfg.BOXES_PER_LOCATION)):
        if not isinstance(ratios, (list, tuple)):
            raise ConfigError(f"MODEL.PRIORS.ASPECT_RATIOS[{k}] = {ratios!r} must be a list of ratios, like [2, 3]; "
                              "ASPECT_RATIOS holds one list per head level")
        expected = 2 + 2 * len(ratios)
        if boxes != expected:
            raise ConfigError(
                f"MODEL.PRIORS.BOXES_PER_LOCATION[{k}] = {boxes} but MODEL.PRIORS.ASPECT_RATIOS[{k}] = "
                f"{list(ratios)} gives 2 + 2 * {len(ratios)} = {expected} boxes per location; "
                f"set BOXES_PER_LOCATION[{k}] to {expected}")


def box_sizes(min_size: float, max_size: float, ratios: list[float]) -> list[tuple[float, float]]:
    """The (w, h) of one cell's priors in pixels, in the SSD order."""
    sizes = [(min_size, min_size)]
    big = math.sqrt(min_size * max_size)
    sizes.append((big, big))
    for ratio in ratios:
        root = math.sqrt(ratio)
        sizes.append((min_size * root, min_size / root))
        sizes.append((min_size / root, min_size * root))
    return sizes


def level_priors(size: int, stride: float, image_size: int, sizes: list[tuple[float, float]]) -> Tensor:
    """The [size*size*len(sizes), 4] priors of one level, ordered row -> column -> box."""
    scale = image_size / stride
    centres = (torch.arange(size, dtype=torch.float64) + 0.5) / scale
    cy, cx = torch.meshgrid(centres, centres, indexing="ij")  # cy varies with the row, cx with the column
    xy = torch.stack([cx, cy], dim=-1).reshape(-1, 1, 2).expand(-1, len(sizes), 2)
    wh = (torch.tensor(sizes, dtype=torch.float64) / image_size).expand(size * size, -1, 2)
    return torch.cat([xy, wh], dim=-1).reshape(-1, 4)


def make_priors(priors_cfg, image_size: int) -> Tensor:
    """All priors as a float32 Tensor[N, 4] of (cx, cy, w, h), level -> row -> column -> box."""
    check_priors_cfg(priors_cfg)
    levels = []
    for k, size in enumerate(priors_cfg.FEATURE_MAPS):
        sizes = box_sizes(priors_cfg.MIN_SIZES[k], priors_cfg.MAX_SIZES[k], priors_cfg.ASPECT_RATIOS[k])
        levels.append(level_priors(size, priors_cfg.STRIDES[k], image_size, sizes))
    priors = torch.cat(levels).float()
    if priors_cfg.CLIP:
        priors.clamp_(min=0.0, max=1.0)
    return priors


def level_slices(priors_cfg) -> list[slice]:
    """The slice of make_priors' output (and of the heads' outputs) that holds each head level."""
    check_priors_cfg(priors_cfg)
    slices, start = [], 0
    for size, boxes in zip(priors_cfg.FEATURE_MAPS, priors_cfg.BOXES_PER_LOCATION):
        slices.append(slice(start, start + size * size * boxes))
        start += size * size * boxes
    return slices
