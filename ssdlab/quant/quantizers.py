"""Fake quantizers with straight-through gradients: DoReFa, IAO (Jacob et al. 2018) and BWN.

Each function maps a float tensor to the float value of its quantized code ("fake" quantization),
so training sees the rounding error while gradients flow around the rounding
(straight-through estimator: d round(x)/dx := 1). Where a method clips, the gradient is cut
outside the clipping range.

- DoReFa weights (k bits): w̃ = tanh(w) / (2·max|tanh w|) + 0.5, q = round(w̃·(2^k−1)) / (2^k−1),
  w_q = 2q − 1 (k levels spread over [−1, 1]);
  activations: round(clamp(s·x, 0, 1)·(2^k−1)) / (2^k−1), s = QUANTIZATION.DOREFA_ACT_SCALE.
- IAO symmetric: scale = absmax / (2^(b−1) − 1), q = clamp(round(x/scale), −2^(b−1), 2^(b−1) − 1),
  x̂ = q·scale (weights per output channel, activations per tensor);
  asymmetric: scale = (max − min) / (2^b − 1), zero point z = clamp(round(−min/scale), 0, 2^b − 1),
  q = clamp(round(x/scale) + z, 0, 2^b − 1), x̂ = (q − z)·scale.
- BWN: binary weights α·sign(W), α = mean|W| per output channel; ternary weights α·sign(W)
  where |W| > Δ = 0.7·mean|W| (0 elsewhere), α = mean of those |W|; binary activations sign(x)
  with the gradient passed only where |x| < 1.

`transfer_curve(name, x, bits)` gives any of them as a plain input -> output curve (for plots).
"""
from __future__ import annotations

import torch
from torch import Tensor

from ssdlab.errors import QuantError


def round_ste(x: Tensor) -> Tensor:
    """round(x) forward, identity backward."""
    return x + (torch.round(x) - x).detach()


def dorefa_weight(w: Tensor, bits: int) -> Tensor:
    """DoReFa weight quantization to k = bits levels in [−1, 1]."""
    t = torch.tanh(w)
    unit = t / (2 * t.abs().max().clamp(min=1e-12)) + 0.5
    levels = 2 ** bits - 1
    return 2 * round_ste(unit * levels) / levels - 1


def dorefa_activation(x: Tensor, bits: int, scale: float) -> Tensor:
    """DoReFa activation quantization of clamp(scale·x, 0, 1) (gradient cut outside [0, 1])."""
    levels = 2 ** bits - 1
    return round_ste(torch.clamp(scale * x, 0, 1) * levels) / levels


def symmetric_scale(absmax: Tensor, bits: int) -> Tensor:
    """IAO symmetric scale: absmax / (2^(b−1) − 1) (tiny ranges are floored to avoid dividing by 0)."""
    return absmax.clamp(min=1e-8) / (2 ** (bits - 1) - 1)


def fake_symmetric(x: Tensor, scale: Tensor, bits: int) -> Tensor:
    """Symmetric fake quantization: clamp(round(x/scale), −2^(b−1), 2^(b−1)−1)·scale (gradient cut where clamped)."""
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return torch.clamp(round_ste(x / scale), low, high) * scale


def asymmetric_params(low: Tensor, high: Tensor, bits: int) -> tuple[Tensor, Tensor]:
    """(scale, zero point) of the range [min(low, 0), max(high, 0)] on 0..2^b − 1."""
    low, high = torch.clamp(low, max=0.0), torch.clamp(high, min=0.0)
    top = 2 ** bits - 1
    scale = ((high - low) / top).clamp(min=1e-8)
    zero = torch.clamp(torch.round(-low / scale), 0, top)
    return scale, zero


def fake_asymmetric(x: Tensor, scale: Tensor, zero: Tensor, bits: int) -> Tensor:
    """Asymmetric fake quantization: (clamp(round(x/scale) + z, 0, 2^b − 1) − z)·scale."""
    return (torch.clamp(round_ste(x / scale) + zero, 0, 2 ** bits - 1) - zero) * scale


def per_channel_absmax(w: Tensor) -> Tensor:
    """max |w| of each output channel, shaped to broadcast over the weight."""
    return w.detach().abs().amax(dim=tuple(range(1, w.dim())), keepdim=True)


def iao_weight(w: Tensor, bits: int) -> Tensor:
    """IAO symmetric per-output-channel weight quantization."""
    return fake_symmetric(w, symmetric_scale(per_channel_absmax(w), bits), bits)


def binary_weight(w: Tensor) -> Tensor:
    """α·sign(W) with α = mean|W| per output channel; straight-through gradient."""
    alpha = w.detach().abs().mean(dim=tuple(range(1, w.dim())), keepdim=True)
    sign = torch.where(w >= 0, 1.0, -1.0)
    return alpha * sign + (w - w.detach())  # exactly α·sign(W) forward (w + (α·sign − w) would round)


def ternary_weight(w: Tensor) -> Tensor:
    """α·sign(W)·[|W| > Δ], Δ = 0.7·mean|W|, α = mean of |W| above Δ (per output channel); straight-through."""
    dims = tuple(range(1, w.dim()))
    magnitude = w.detach().abs()
    delta = 0.7 * magnitude.mean(dim=dims, keepdim=True)
    mask = (magnitude > delta).to(w.dtype)
    alpha = (magnitude * mask).sum(dim=dims, keepdim=True) / mask.sum(dim=dims, keepdim=True).clamp(min=1)
    return alpha * torch.sign(w.detach()) * mask + (w - w.detach())


def binary_activation(x: Tensor) -> Tensor:
    """sign(x) forward; gradient passed only where |x| < 1 (hard-tanh straight-through)."""
    clipped = torch.clamp(x, -1, 1)
    return torch.sign(x.detach()) + (clipped - clipped.detach())


CURVES = ("dorefa_weight", "dorefa_activation", "iao_symmetric", "iao_asymmetric", "binary_weight",
          "ternary_weight", "binary_activation")


def transfer_curve(name: str, x: Tensor, bits: int = 8, act_scale: float = 0.1) -> Tensor:
    """The quantizer `name` (one of CURVES) applied to a 1-D input: x counts as one channel, IAO ranges are x's."""
    if name not in CURVES:
        raise QuantError(f"transfer curve {name!r} is unknown; use one of {', '.join(CURVES)}")
    with torch.no_grad():
        if name == "dorefa_weight":
            return dorefa_weight(x, bits)
        if name == "dorefa_activation":
            return dorefa_activation(x, bits, act_scale)
        if name == "iao_symmetric":
            return fake_symmetric(x, symmetric_scale(x.abs().max(), bits), bits)
        if name == "iao_asymmetric":
            scale, zero = asymmetric_params(x.min(), x.max(), bits)
            return fake_asymmetric(x, scale, zero, bits)
        if name == "binary_weight":
            return binary_weight(x.reshape(1, -1)).reshape(x.shape)
        if name == "ternary_weight":
            return ternary_weight(x.reshape(1, -1)).reshape(x.shape)
        return binary_activation(x)
