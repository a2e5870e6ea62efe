"""The integer form of an IAO conv after BN fusion: int8 weight codes, per-channel scales, int32 bias."""
from __future__ import annotations

import numpy as np
import torch

from ssdlab.quant.layers import QuantConv2d
from ssdlab.quant.quantizers import per_channel_absmax, symmetric_scale


def integer_layer(conv: QuantConv2d) -> dict:
    """Integer codes, per-channel scales and the int32 bias of an IAO conv (after fusion)."""
    bits = conv.spec.wbits
    w_scale = symmetric_scale(per_channel_absmax(conv.weight.detach()), bits)
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    codes = torch.clamp(torch.round(conv.weight.detach() / w_scale), low, high)
    s_in, z_in = (float(v) for v in conv.act_quant.params())
    scales = w_scale.flatten()
    bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(scales)
    layer = {"codes": codes.numpy().astype(np.int8 if bits <= 8 else np.int16), "weight_scales": scales.numpy(),
             "input_scale": s_in, "input_zero_point": int(z_in),
             "bias_int32": torch.round(bias / (s_in * scales)).numpy().astype("<i4")}
    output = getattr(conv, "out_quant", None)
    if output is not None and bool(output.initialized):  # a head conv whose output is quantized too
        s_out, z_out = (float(v) for v in output.params())
        layer.update(output_scale=s_out, output_zero_point=int(z_out))
    return layer
