"""Integer-only reference inference of an IAO-quantized SSD in NumPy: what an accelerator computes.

Every quantized conv takes integer input codes q_x (scale s_x, zero point z_x) and integer
weight codes q_w (symmetric, scale s_w[o] per output channel) and accumulates in int32:

    acc[o] = Σ (q_x − z_x)·q_w[o] + bias_int32[o]        real value = s_x·s_w[o]·acc[o]

ReLU is max(acc, 0) (ReLU6 also clips at round(6 / (s_x·s_w[o]))) and a max-pool pools the
int32 values. A head conv whose output the model quantizes (QUANTIZATION.FINAL) requantizes
its int32 result to those codes the same way. Each consumer with input scale s_y (zero point z_y) gets its codes by fixed-point
requantization (Jacob et al. 2018, §2.2):

    q_y = clamp(z_y + round(acc·m0[o] / 2^r), qmin, qmax)     with  s_x·s_w[o] / s_y ≈ m0[o]·2^−r

where m0 is a 31-bit integer and the division is a rounding right shift. A residual add
requantizes both int32 inputs to the smaller scale first. Layers the cfg leaves in float (the
input layer, the heads unless QUANTIZATION.FINAL, L2Norm, leaky/h-swish activations) run in
float32 exactly as in the fake-quantized model; `macs` counts what ran in integer and in float.

The int32 products are computed with a float64 matrix product: every |acc| < 2^31 < 2^53 is
exact in float64, so the result equals an int32 accumulator bit for bit (checked for overflow).

    reference = IntegerReference(model)          # an IAO model (ssdlab.load of a QAT checkpoint)
    detections = reference(images)               # like model.eval()(images)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view
from torch import Tensor, nn

from ssdlab.engine.evaluate import agreement
from ssdlab.errors import ExportError
from ssdlab.export.fuse import fuse_model
from ssdlab.model.backbone import L2Norm, Shortcut
from ssdlab.model.heads import BoxHead
from ssdlab.model.postprocess import postprocess
from ssdlab.quant.integer import integer_layer
from ssdlab.quant.layers import QuantConv2d, QuantSpec, conv_geometry

if TYPE_CHECKING:
    from ssdlab.model.ssd import SSD

INT32 = 2 ** 31


@dataclass
class Real:
    """A float32 feature map [N, C, H, W]."""

    x: np.ndarray


@dataclass
class Acc:
    """An int32 feature map [N, C, H, W] (held in int64) whose real value is acc · scale[c]."""

    acc: np.ndarray
    scale: np.ndarray


def real(value: Real | Acc) -> np.ndarray:
    """The float value of a feature map."""
    if isinstance(value, Real):
        return value.x
    return (value.acc * value.scale.reshape(1, -1, 1, 1)).astype(np.float32)


def quantize_multiplier(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(m0, r) with m ≈ m0 · 2^−r, m0 a 31-bit integer in [2^30, 2^31) (positive m)."""
    mantissa, exponent = np.frexp(np.asarray(m, dtype=np.float64))
    m0 = np.round(mantissa * INT32).astype(np.int64)
    carry = m0 == INT32
    m0[carry] //= 2
    exponent = exponent + carry
    return m0, np.clip(31 - exponent, 1, 62).astype(np.int64)


def requantize(acc: np.ndarray, m: np.ndarray) -> np.ndarray:
    """round(acc · m[c]) per channel with a fixed-point multiplier and a rounding right shift."""
    m0, r = (v.reshape(1, -1, 1, 1) for v in quantize_multiplier(m))
    return (acc * m0 + (np.int64(1) << (r - 1))) >> r


def codes(value: Real | Acc, scale: float, zero: int, bits: int, symmetric: bool) -> np.ndarray:
    """Integer codes of a feature map at a consumer's input scale and zero point, as int64."""
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if symmetric else (0, 2 ** bits - 1)
    if isinstance(value, Real):
        q = np.round(value.x.astype(np.float64) / scale) + zero
    else:
        q = requantize(value.acc, value.scale / scale) + zero
    return np.clip(q, low, high).astype(np.int64)


def add(a: Real | Acc, b: Real | Acc) -> Real | Acc:
    """A residual add; two int32 maps are first requantized to the smaller scale of each channel."""
    if isinstance(a, Acc) and isinstance(b, Acc):
        common = np.minimum(a.scale, b.scale)
        return Acc(requantize(a.acc, a.scale / common) + requantize(b.acc, b.scale / common), common)
    return Real(real(a) + real(b))


def windows(x: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int],
            dilation: tuple[int, int] = (1, 1), extra: tuple[int, int] = (0, 0), fill: float = 0) -> np.ndarray:
    """Sliding windows [N, C, Ho, Wo, kh, kw] of a padded [N, C, H, W] map (extra: more padding right/bottom)."""
    (ph, pw), (eh, ew) = padding, extra
    x = np.pad(x, ((0, 0), (0, 0), (ph, ph + eh), (pw, pw + ew)), constant_values=fill)
    span = tuple(d * (k - 1) + 1 for k, d in zip(kernel, dilation))
    view = sliding_window_view(x, span, axis=(2, 3))
    return view[:, :, ::stride[0], ::stride[1], ::dilation[0], ::dilation[1]]


def conv2d(x: np.ndarray, weight: np.ndarray, stride: tuple[int, int], padding: tuple[int, int],
           dilation: tuple[int, int], groups: int) -> np.ndarray:
    """A grouped 2-D convolution (no bias) as one batched matrix product."""
    n, c = x.shape[:2]
    out, per_group, kh, kw = weight.shape
    view = windows(x, (kh, kw), stride, padding, dilation)
    ho, wo = view.shape[2:4]
    cols = view.reshape(n, groups, per_group, ho, wo, kh, kw).transpose(0, 1, 2, 5, 6, 3, 4)
    cols = cols.reshape(n, groups, per_group * kh * kw, ho * wo)
    result = np.matmul(weight.reshape(1, groups, out // groups, per_group * kh * kw), cols)
    return result.reshape(n, out, ho, wo)


def activation(value: Real | Acc, name: str) -> Real | Acc:
    """ReLU / ReLU6 in the int32 domain; other activations in float."""
    if isinstance(value, Acc) and name in ("ReLU", "ReLU6"):
        acc = np.maximum(value.acc, 0)
        if name == "ReLU6":
            acc = np.minimum(acc, np.round(6 / value.scale).astype(np.int64).reshape(1, -1, 1, 1))
        return Acc(acc, value.scale)
    x = real(value)
    if name == "ReLU":
        return Real(np.maximum(x, 0))
    if name == "ReLU6":
        return Real(np.clip(x, 0, 6))
    if name == "LeakyReLU":
        return Real(np.where(x > 0, x, 0.1 * x).astype(np.float32))
    if name == "Hardswish":
        return Real((x * np.clip(x + 3, 0, 6) / 6).astype(np.float32))
    raise ExportError(f"the integer reference has no {name} activation")


class Conv:
    """One conv of the fused model: integer (IAO-quantized) or float, with its activation."""

    def __init__(self, conv: nn.Conv2d, act: nn.Module | None):
        self.geometry = conv_geometry(conv)[1:]  # stride, padding, dilation, groups
        self.act = type(act).__name__ if act is not None else None
        self.integer = isinstance(conv, QuantConv2d) and conv.spec.wbits < 32
        self.output: tuple | None = None  # (scale, zero, bits, symmetric) of a quantized output
        if self.integer:
            quantized = cast(QuantConv2d, conv)  # what self.integer says
            layer = integer_layer(quantized)
            self.weight = layer["codes"].astype(np.float64)
            self.scales, self.bias = layer["weight_scales"].astype(np.float64), layer["bias_int32"].astype(np.int64)
            self.input = (layer["input_scale"], layer["input_zero_point"], quantized.spec.abits,
                          quantized.spec.mode == "symmetric")
            self.output = ((layer["output_scale"], layer["output_zero_point"], *self.input[2:])
                           if "output_scale" in layer else None)
        else:
            self.weight = conv.weight.detach().numpy().astype(np.float32)
            self.bias = conv.bias.detach().numpy() if conv.bias is not None else np.zeros(len(self.weight), np.float32)

    def macs(self, out: np.ndarray) -> int:
        """Multiply-accumulates of one image for an output map."""
        return int(self.weight[0].size * out.shape[1] * out.shape[2] * out.shape[3])

    def __call__(self, value: Real | Acc, count: dict[str, int]) -> Real | Acc:
        """The conv (+ bias, + activation) of a feature map."""
        if self.integer:
            x = codes(value, *self.input).astype(np.float64) - self.input[1]
            acc = np.round(conv2d(x, self.weight, *self.geometry)).astype(np.int64) + self.bias.reshape(1, -1, 1, 1)
            if np.abs(acc).max(initial=0) >= INT32:
                raise ExportError("an int32 accumulator overflowed in the integer reference; report this model")
            result: Real | Acc = Acc(acc, self.input[0] * self.scales)
        else:
            out = conv2d(real(value), self.weight, *self.geometry) + self.bias.reshape(1, -1, 1, 1)
            result = Real(out.astype(np.float32))
        data = cast(Acc, result).acc if self.integer else cast(Real, result).x  # an integer conv's result is an Acc
        count["integer" if self.integer else "float"] += self.macs(data)
        result = activation(result, self.act) if self.act else result
        return self.quantized_output(result) if self.output else result

    def quantized_output(self, result: Real | Acc) -> Real:
        """A head conv's int32 output requantized to its output codes, as real values."""
        assert self.output is not None  # called only for a conv with a quantized output
        scale, zero = self.output[:2]
        return Real(((codes(result, *self.output) - zero) * scale).astype(np.float32))


def max_pool(value: Real | Acc, pool: nn.MaxPool2d) -> Real | Acc:
    """torch's MaxPool2d (padding, ceil_mode) on float or int32 maps (int32 pools exactly)."""
    data = value.x if isinstance(value, Real) else value.acc
    k, s, p = (v if isinstance(v, int) else v[0] for v in (pool.kernel_size, pool.stride, pool.padding))
    sizes = []
    for length in data.shape[2:]:
        span = length + 2 * p - k
        out = (-(-span // s) if pool.ceil_mode else span // s) + 1
        if pool.ceil_mode and (out - 1) * s >= length + p:
            out -= 1
        sizes.append(out)
    extra = tuple(max(0, (o - 1) * s + k - (length + 2 * p)) for o, length in zip(sizes, data.shape[2:]))
    fill = -np.inf if isinstance(value, Real) else np.iinfo(np.int64).min
    pooled = windows(data, (k, k), (s, s), (p, p), extra=extra, fill=fill).max(axis=(4, 5))
    pooled = pooled[:, :, :sizes[0], :sizes[1]]
    return Real(pooled) if isinstance(value, Real) else Acc(pooled, value.scale)


def layer_ops(module: nn.Module) -> list:
    """The reference operations of one backbone layer or head predictor."""
    if isinstance(module, nn.Conv2d):
        return [Conv(module, None)]
    if isinstance(module, nn.MaxPool2d):
        return [module]
    parts = dict(module.named_children())
    if "pointwise" in parts:  # SSDLite predictor: depthwise conv + act, then a pointwise conv
        return [Conv(cast(nn.Conv2d, parts["conv"]), parts.get("act")), Conv(cast(nn.Conv2d, parts["pointwise"]), None)]
    return [Conv(cast(nn.Conv2d, parts["conv"]), parts.get("act"))]


class IntegerReference(nn.Module):
    """An IAO model run with integer arithmetic wherever it is quantized; call it like model.eval()."""

    def __init__(self, model: SSD):
        super().__init__()
        spec: QuantSpec | None = model.quant_spec
        if spec is None or spec.kind != "IAO" or spec.abits > 16:
            kind = "a float" if spec is None else f"a {spec.kind} W{spec.wbits}A{spec.abits}"
            raise ExportError(f"the integer reference needs an IAO model with quantized activations, not {kind} "
                              "model; train one with QUANTIZATION.TYPE IAO (python -m ssdlab quantize ...)")
        fused = fuse_model(model).cpu()
        self.cfg, self.priors = model.cfg, cast(Tensor, model.priors).detach().cpu()
        self.defs = fused.backbone.defs
        self.layers = [module if isinstance(module, (Shortcut, nn.MaxPool2d)) else layer_ops(module)
                       for module in fused.backbone.module_list]
        self.l2norms: dict[int, L2Norm] = {int(i): cast(L2Norm, m) for i, m in fused.backbone.l2norms.items()}
        self.feature_layers = fused.backbone.feature_layers
        self.shortcut_sources = fused.backbone.shortcut_sources
        head = cast(BoxHead, fused.box_head)
        self.num_classes = head.num_classes
        self.heads = [(layer_ops(c), layer_ops(r)) for c, r in zip(head.cls_headers, head.reg_headers)]
        self.macs = {"integer": 0, "float": 0}

    def features(self, x: np.ndarray) -> list[Real | Acc]:
        """The head feature maps of a batch of preprocessed images [N, 3, S, S]."""
        value: Real | Acc = Real(x.astype(np.float32))
        kept: dict[int, Real | Acc] = {}
        features: dict[int, Real | Acc] = {}
        for index, layer in enumerate(self.layers):
            if isinstance(layer, Shortcut):
                value = add(value, kept[layer.source])
            elif isinstance(layer, nn.MaxPool2d):
                value = max_pool(value, layer)
            else:
                for op in layer:
                    value = op(value, self.macs)
            if index in self.shortcut_sources:
                kept[index] = value
            if index in self.l2norms:
                with torch.no_grad():
                    features[index] = Real(self.l2norms[index](torch.from_numpy(real(value))).numpy())
            elif self.defs[index].get("feature"):
                features[index] = value
        return [features[i] for i in self.feature_layers]

    def _head(self, ops: list, value: Real | Acc, per_box: int) -> np.ndarray:
        """One predictor's output flattened to [N, H·W·b, per_box] (level → row → column → box)."""
        for op in ops:
            value = op(value, self.macs)
        out = real(value)
        return out.transpose(0, 2, 3, 1).reshape(out.shape[0], -1, per_box)

    def forward_raw(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(cls_logits [B, N, C], bbox_pred [B, N, 4]) as the model's forward_raw."""
        self.macs = {"integer": 0, "float": 0}
        features = self.features(images.detach().cpu().numpy())
        cls = [self._head(c, f, self.num_classes) for (c, _), f in zip(self.heads, features)]
        reg = [self._head(r, f, 4) for (_, r), f in zip(self.heads, features)]
        return torch.from_numpy(np.concatenate(cls, axis=1)), torch.from_numpy(np.concatenate(reg, axis=1))

    def integer_share(self) -> float:
        """Fraction of the last forward's MACs that ran in integer arithmetic."""
        return self.macs["integer"] / max(1, self.macs["integer"] + self.macs["float"])

    def forward(self, images: Tensor) -> list[dict[str, Tensor]]:
        """Detections per image, post-processed exactly as SSD.forward in eval mode."""
        cls_logits, bbox_pred = self.forward_raw(images)
        cfg = self.cfg
        return postprocess(cls_logits, bbox_pred, self.priors, cfg.INPUT.IMAGE_SIZE, cfg.MODEL.CENTER_VARIANCE,
                           cfg.MODEL.SIZE_VARIANCE, score_threshold=cfg.TEST.CONFIDENCE_THRESHOLD,
                           nms_threshold=cfg.TEST.NMS_THRESHOLD, max_per_image=cfg.TEST.MAX_PER_IMAGE,
                           pre_nms_top_k=cfg.TEST.PRE_NMS_TOP_K)


def compare_integer(model: SSD, dataset, cfg, reference: IntegerReference | None = None) -> dict:
    """mAP of the fake-quantized model and of its integer reference on a dataset, and their agreement."""
    from ssdlab.engine.inference import predict, score

    reference = reference or IntegerReference(model)
    fake, integer = predict(model, dataset, cfg), predict(reference, dataset, cfg)
    return {"fake_quant": score(dataset, fake, cfg), "integer": score(dataset, integer, cfg),
            "agreement": agreement(integer, fake), "integer_share": reference.integer_share()}
