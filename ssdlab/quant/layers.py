"""Quantized layers: a conv with fake-quantized input and weights, and IAO's conv with BN folded in.

Both keep the float module names (`conv`, `bn`, `act`) so checkpoints, pruning and export find
the same tensors as in a float model; the input quantizer is `act_quant`, and an IAO head conv
also quantizes its output (`out_quant`, so an int8 graph can run it as one integer kernel); their
range buffers are the only new state. `weight_bits` on a conv tells `ssdlab.engine.profile.size_mib` how many bits
one stored weight takes.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssdlab.config import CHOICES
from ssdlab.errors import QuantError
from ssdlab.quant import quantizers as q
from ssdlab.quant.quantizers import per_channel_absmax

if TYPE_CHECKING:
    class TrackedBatchNorm2d(nn.BatchNorm2d):
        """A BatchNorm2d with running statistics and a momentum (the cfg's BNs; torch types them Optional)."""

        running_mean: Tensor
        running_var: Tensor
        num_batches_tracked: Tensor
        momentum: float


def conv_geometry(conv: nn.Conv2d) -> tuple[Any, Any, Any, Any, int]:
    """(kernel_size, stride, padding, dilation, groups) of a conv: what a copy of it needs after its channel counts,
    and (without the kernel size) what F.conv2d needs after weight and bias."""
    return conv.kernel_size, conv.stride, conv.padding, conv.dilation, conv.groups


QUANTIZER_STATE = re.compile(r".*\.(act|out)_quant\.\w+")  # range buffers: absent from float checkpoints, learned in QAT


# allowed WBITS / ABITS per type (32 = leave that side in float)
BITS = {
    "dorefa": (tuple(range(2, 17)) + (32,), tuple(range(2, 17)) + (32,)),
    "IAO": (tuple(range(2, 17)) + (32,), tuple(range(2, 17)) + (32,)),
    "BWN": ((2, 3, 32), (2, 32)),
}
IAO_MODES = CHOICES["QUANTIZATION.IAO_MODE"]


def _allowed(values: tuple[int, ...]) -> str:
    """'2..16 or 32' style text for an error message."""
    run = [v for v in values if v != 32]
    return (f"{run[0]}..{run[-1]}" if len(run) > 2 else ", ".join(map(str, run))) + " or 32 (float)"


@dataclass(frozen=True)
class QuantSpec:
    """A model's quantization: the QUANTIZATION.* setting, checked when made, and where it applies.

    `layers` are the backbone layers swapped for quantized ones (the cfg's quantization=1 marks),
    `heads` whether the prediction-head convs are quantized too (QUANTIZATION.FINAL). A checkpoint
    stores it (`to_dict`), so a model is rebuilt with the quantization it was trained with.
    """

    kind: str  # dorefa | IAO | BWN
    wbits: int
    abits: int
    act_scale: float = 0.1  # DoReFa's s
    mode: str = "symmetric"  # IAO: symmetric | asymmetric
    layers: tuple[int, ...] = ()
    heads: bool = False

    def __post_init__(self) -> None:
        """QuantError naming the QUANTIZATION key of a value outside what the kind allows."""
        if self.kind not in BITS:
            raise QuantError(f"QUANTIZATION.TYPE = {self.kind!r} is unknown; use no, {', '.join(BITS)}")
        wbits, abits = BITS[self.kind]
        bwn = self.kind == "BWN"
        if self.wbits not in wbits:
            raise QuantError(f"QUANTIZATION.WBITS = {self.wbits} is not allowed for {self.kind}; use "
                             f"{_allowed(wbits)}" + (" (2 = binary, 3 = ternary)" if bwn else ""))
        if self.abits not in abits:
            raise QuantError(f"QUANTIZATION.ABITS = {self.abits} is not allowed for {self.kind}; use "
                             f"{_allowed(abits)}" + (" (2 = binary activations)" if bwn else ""))
        if self.mode not in IAO_MODES:
            raise QuantError(f"QUANTIZATION.IAO_MODE = {self.mode!r} is unknown; use one of {', '.join(IAO_MODES)}")

    def to_dict(self) -> dict:
        """Plain types for a checkpoint."""
        return {**asdict(self), "layers": list(self.layers)}

    @classmethod
    def from_dict(cls, stored: dict) -> "QuantSpec":
        """The spec a checkpoint stored (to_dict)."""
        return cls(**{**stored, "layers": tuple(stored.get("layers", ()))})

    @property
    def weight_bits(self) -> int:
        """Storage bits per weight: BWN binary 1, ternary 2; k otherwise; 32 when not quantized."""
        if self.kind == "BWN":
            return {2: 1, 3: 2}.get(self.wbits, 32)
        return self.wbits if self.wbits < 32 else 32

    def weight(self, w: Tensor) -> Tensor:
        """The fake-quantized weight."""
        if self.wbits >= 32:
            return w
        if self.kind == "dorefa":
            return q.dorefa_weight(w, self.wbits)
        if self.kind == "IAO":
            return q.iao_weight(w, self.wbits)
        return q.binary_weight(w) if self.wbits == 2 else q.ternary_weight(w)


class ActQuant(nn.Module):
    """Fake-quantizes a layer's input; IAO tracks the range with an EMA (momentum 0.1).

    The range is updated only in training mode and until `frozen` is set
    (QUANTIZATION.FREEZE_OBSERVER_ITER); the first training batch sets it directly. An IAO
    quantizer that has observed nothing yet (a float checkpoint before QAT or calibration) passes
    x through.
    """

    low: Tensor
    high: Tensor
    initialized: Tensor

    def __init__(self, spec: QuantSpec, momentum: float = 0.1):
        super().__init__()
        self.spec, self.momentum, self.frozen = spec, momentum, False
        self.register_buffer("low", torch.zeros(()))
        self.register_buffer("high", torch.zeros(()))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def observe(self, x: Tensor) -> None:
        """EMA update of the range from one batch."""
        low, high = x.min(), x.max()
        if not bool(self.initialized):
            self.low.copy_(low)
            self.high.copy_(high)
            self.initialized.fill_(True)
        else:
            self.low.lerp_(low, self.momentum)
            self.high.lerp_(high, self.momentum)

    def forward(self, x: Tensor) -> Tensor:
        """The quantized activation (x itself at 32 bits)."""
        spec = self.spec
        if spec.abits >= 32:
            return x
        if spec.kind == "dorefa":
            return q.dorefa_activation(x, spec.abits, spec.act_scale)
        if spec.kind == "BWN":
            return q.binary_activation(x)
        if self.training and not self.frozen:
            self.observe(x)
        if not bool(self.initialized):
            return x
        scale, zero = self.params()
        if spec.mode == "asymmetric":
            return q.fake_asymmetric(x, scale, zero, spec.abits)
        return q.fake_symmetric(x, scale, spec.abits)

    def params(self) -> tuple[Tensor, Tensor]:
        """IAO (scale, zero point) of the observed range (zero point 0 when symmetric)."""
        if self.spec.mode == "asymmetric":
            return q.asymmetric_params(self.low, self.high, self.spec.abits)
        return q.symmetric_scale(torch.maximum(self.low.abs(), self.high.abs()), self.spec.abits), self.low.new_zeros(())

    def bias(self, bias: Tensor, weight: Tensor) -> Tensor:
        """An IAO layer's bias on the int32 grid of s_input·s_weight[o] (what integer hardware adds)."""
        if self.spec.kind != "IAO" or self.spec.abits >= 32 or self.spec.wbits >= 32:
            return bias
        step = self.params()[0] * q.symmetric_scale(per_channel_absmax(weight), self.spec.wbits).flatten()
        return q.round_ste(bias / step) * step


class QuantConv2d(nn.Conv2d):
    """A Conv2d whose input (act_quant) and weights are fake-quantized in the forward pass (IAO: the bias too).

    output=True (IAO only) fake-quantizes the output as well, with its own observed range (`out_quant`).
    """

    out_quant: ActQuant

    def __init__(self, conv: nn.Conv2d, spec: QuantSpec, output: bool = False):
        super().__init__(conv.in_channels, conv.out_channels, *conv_geometry(conv), conv.bias is not None)
        self.load_state_dict(conv.state_dict())
        self.spec = spec
        self.weight_bits = spec.weight_bits
        self.act_quant = ActQuant(spec)
        if output and spec.kind == "IAO" and spec.abits < 32:
            self.out_quant = ActQuant(spec)

    def quantized_weight(self) -> Tensor:
        """The weight the forward pass uses."""
        return self.spec.weight(self.weight)

    def forward(self, x: Tensor) -> Tensor:
        """conv(quantized input, quantized weight) + bias."""
        bias = self.bias if self.bias is None else self.act_quant.bias(self.bias, self.weight)
        y = self._conv_forward(self.act_quant(x), self.quantized_weight(), bias)
        return self.out_quant(y) if hasattr(self, "out_quant") else y


class IAOConvBN(nn.Module):
    """Conv + BN (+ activation) with BN folded into the quantized weights (Jacob et al. 2018).

    Training: W_fold = W·γ/√(σ²_run+ε) is quantized, the conv output is rescaled per channel by
    √(σ²_run+ε)/√(σ²_B+ε) and shifted by β − μ_B·γ/√(σ²_B+ε), with batch statistics μ_B, σ²_B
    that the gradient flows through as in BN (which also update the running ones, BN momentum 0.01). Eval, or once `bn_frozen`
    (QUANTIZATION.FREEZE_BN_ITER): running statistics only, i.e. conv(x, q(W_fold)) + b_fold, with b_fold on the int32 grid
    s_input·s_weight[o] as integer hardware adds it.
    """

    conv: nn.Conv2d
    bn: TrackedBatchNorm2d
    act: nn.Module

    def __init__(self, block: nn.Sequential, spec: QuantSpec):
        super().__init__()
        self.conv, self.bn = cast(nn.Conv2d, block.conv), cast("TrackedBatchNorm2d", block.bn)
        if hasattr(block, "act"):
            self.act = cast(nn.Module, block.act)
        self.bn.momentum = 0.01
        setattr(self.conv, "weight_bits", spec.weight_bits)  # an int: Module.__setattr__ is typed for tensors and modules
        self.spec, self.bn_frozen = spec, False
        self.act_quant = ActQuant(spec)

    def _conv(self, x: Tensor, weight: Tensor) -> Tensor:
        """The conv's geometry with another weight and no bias."""
        c = self.conv
        return F.conv2d(x, weight, None, c.stride, c.padding, c.dilation, c.groups)

    def folded(self) -> tuple[Tensor, Tensor]:
        """(quantized W_fold, b_fold) from the running statistics: what eval and export use."""
        bn, c = self.bn, self.conv
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        shift = bn.running_mean - (c.bias if c.bias is not None else 0.0)
        weight = c.weight * scale.view(-1, 1, 1, 1)
        return self.spec.weight(weight), self.act_quant.bias(bn.bias - shift * scale, weight)

    def forward(self, x: Tensor) -> Tensor:
        """Folded conv + BN on the quantized input, then the activation."""
        x = self.act_quant(x)
        if self.training and not self.bn_frozen:
            y = self._batch_folded(x)
        else:
            weight, bias = self.folded()
            y = self._conv(x, weight) + bias.view(1, -1, 1, 1)
        return self.act(y) if hasattr(self, "act") else y

    def _batch_folded(self, x: Tensor) -> Tensor:
        """The training forward with batch-statistics correction; updates the running statistics."""
        bn, c = self.bn, self.conv
        raw = self._conv(x, c.weight)
        mean, var = raw.mean(dim=(0, 2, 3)), raw.var(dim=(0, 2, 3), unbiased=False)
        with torch.no_grad():
            count = raw.numel() / raw.shape[1]
            offset = c.bias if c.bias is not None else 0.0
            bn.running_mean.lerp_(mean + offset, bn.momentum)
            bn.running_var.lerp_(var * count / max(count - 1, 1), bn.momentum)
            bn.num_batches_tracked += 1
        running_std = torch.sqrt(bn.running_var + bn.eps)
        batch_std = torch.sqrt(var + bn.eps)
        weight = self.spec.weight(c.weight * (bn.weight / running_std).view(-1, 1, 1, 1))
        y = self._conv(x, weight) * (running_std / batch_std).view(1, -1, 1, 1)
        return y + (bn.bias - mean * bn.weight / batch_std).view(1, -1, 1, 1)
