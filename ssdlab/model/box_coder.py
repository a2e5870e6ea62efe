"""The SSD box coder: boxes <-> offsets relative to the priors.

With a prior (p_cx, p_cy, p_w, p_h) and a box (g_cx, g_cy, g_w, g_h):

    t_xy = (g_xy - p_xy) / p_wh / center_variance
    t_wh = log(g_wh / p_wh) / size_variance

`decode` is the inverse. Both work on [N, 4] and on batched [B, N, 4] tensors
(priors [N, 4] broadcast over the batch). Boxes must have a positive width and
height, or log() gives -inf.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import box_convert


def encode(boxes_xyxy: Tensor, priors_cxcywh: Tensor, center_variance: float = 0.1,
           size_variance: float = 0.2) -> Tensor:
    """Offsets (t_cx, t_cy, t_w, t_h) of xyxy boxes relative to (cx, cy, w, h) priors."""
    boxes = box_convert(boxes_xyxy, in_fmt="xyxy", out_fmt="cxcywh")
    t_xy = (boxes[..., :2] - priors_cxcywh[..., :2]) / priors_cxcywh[..., 2:] / center_variance
    t_wh = torch.log(boxes[..., 2:] / priors_cxcywh[..., 2:]) / size_variance
    return torch.cat([t_xy, t_wh], dim=-1)


def decode(loc: Tensor, priors_cxcywh: Tensor, center_variance: float = 0.1,
           size_variance: float = 0.2) -> Tensor:
    """xyxy boxes (normalised like the priors) from predicted offsets; the inverse of encode."""
    xy = loc[..., :2] * center_variance * priors_cxcywh[..., 2:] + priors_cxcywh[..., :2]
    wh = torch.exp(loc[..., 2:] * size_variance) * priors_cxcywh[..., 2:]
    return box_convert(torch.cat([xy, wh], dim=-1), in_fmt="cxcywh", out_fmt="xyxy")
