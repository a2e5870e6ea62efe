"""An IAO model as an int8 ONNX graph in QDQ form, which onnxruntime runs with int8 kernels.

Every IAO conv of the BN-fused model becomes

    QuantizeLinear → DequantizeLinear (input: the QAT scale and zero point; uint8 when the input
    is never negative, as after a ReLU, or asymmetric, int8 otherwise) → Conv ← DequantizeLinear
    ← int8 weights (per output channel)

and its output is quantized once, at the input scale of the quantized convs that read it (the
next backbone conv through max-pools, and the level's head convs), so onnxruntime fuses
DQ → Conv → (ReLU) → Q into one QLinearConv and pools in int8. A reader whose input scale is the
same (the observers saw the same tensor) takes those codes as they are; one with another scale
requantizes them. Under QUANTIZATION.FINAL the head convs quantize their outputs too (the model's
`out_quant`), so every conv of the graph can run in int8; dequantization happens only before
the softmax and the box decoding. Layers the cfg leaves in float stay float; a float reader
(a head without FINAL, an L2Norm, a residual add) reads the dequantized value.

The graph computes what the fake-quantized model computes except that a reader with another scale
sees the codes twice rounded, and that uint8 keeps post-ReLU values up to 255·s where the model
clamps at 127·s; `ssdlab.engine.evaluate.agreement` measures the difference on a dataset.

    path = write_int8_onnx(model, out, "model")            # an IAO model
    detections = OnnxDetector(path, model)(images)         # like model.eval()(images)

The weights are stored as int8 initializers (a quarter of the float file): the traced graph's
QuantizeLinear on each float weight is folded by onnxruntime's basic, hardware-independent
optimization level.
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssdlab.errors import ExportError
from ssdlab.export.fuse import fuse_model
from ssdlab.export.runtime import onnx_session, ScoresAndBoxes
from ssdlab.model.heads import BoxHead
from ssdlab.model.postprocess import detect_one
from ssdlab.quant.integer import integer_layer
from ssdlab.quant.layers import QuantConv2d, QuantSpec, conv_geometry

if TYPE_CHECKING:
    from ssdlab.model.ssd import SSD


def _range(unsigned: bool) -> tuple[int, int]:
    """(qmin, qmax) of uint8 or int8."""
    return (0, 255) if unsigned else (-128, 127)


def _fake_quant(x: Tensor, grid: tuple[float, int, bool]) -> Tensor:
    """Q/DQ of x on a (scale, zero point, unsigned) grid."""
    scale, zero, unsigned = grid
    return torch.fake_quantize_per_tensor_affine(x, scale, zero, *_range(unsigned))


class QDQConv(nn.Module):
    """An IAO conv with QuantizeLinear/DequantizeLinear on its input and int8 per-channel weights.

    `output` (a head conv under QUANTIZATION.FINAL) quantizes its output too; `quantize_input`
    False when the producer already delivers codes on this conv's input grid.
    """

    weight: Tensor
    weight_scales: Tensor
    weight_zeros: Tensor
    bias: Tensor

    def __init__(self, conv: QuantConv2d):
        super().__init__()
        layer = integer_layer(conv)
        self.geometry = conv_geometry(conv)[1:]  # stride, padding, dilation, groups
        scales = torch.from_numpy(layer["weight_scales"]).float()
        self.register_buffer("weight", torch.from_numpy(layer["codes"]).float() * scales.view(-1, 1, 1, 1))
        self.register_buffer("weight_scales", scales)
        self.register_buffer("weight_zeros", torch.zeros(len(scales), dtype=torch.int32))
        self.input_scale, self.input_zero = layer["input_scale"], layer["input_zero_point"]
        self.register_buffer("bias", torch.from_numpy(layer["bias_int32"]).double().mul(
            torch.from_numpy(layer["weight_scales"]).double() * self.input_scale).float())
        asymmetric = conv.spec.mode == "asymmetric"
        self.grid = (self.input_scale, self.input_zero, asymmetric or float(conv.act_quant.low) >= 0)
        self.output = ((layer["output_scale"], layer["output_zero_point"], asymmetric)
                       if "output_scale" in layer else None)
        self.quantize_input = True

    def forward(self, x: Tensor) -> Tensor:
        """conv(Q/DQ(x), DQ(int8 W)) + bias (then Q/DQ of the output where it is quantized)."""
        if self.quantize_input:
            x = _fake_quant(x, self.grid)
        weight = torch.fake_quantize_per_channel_affine(self.weight, self.weight_scales, self.weight_zeros, 0, -128, 127)
        y = F.conv2d(x, weight, self.bias, *self.geometry)
        return _fake_quant(y, self.output) if self.output else y


class OutputQuant(nn.Module):
    """Q/DQ of a layer's output on its readers' input grid (lets onnxruntime fuse the conv into QLinearConv)."""

    def __init__(self, grid: tuple[float, int, bool]):
        super().__init__()
        self.grid = grid

    def forward(self, x: Tensor) -> Tensor:
        """Q/DQ(x)."""
        return _fake_quant(x, self.grid)


def _swap_convs(module: nn.Module) -> None:
    """Replace every IAO QuantConv2d below module by a QDQConv, in place."""
    for name, child in module.named_children():
        if isinstance(child, QuantConv2d) and child.spec.wbits < 32 and child.spec.abits < 32:
            setattr(module, name, QDQConv(child))
        else:
            _swap_convs(child)


def _first_conv(module: nn.Module) -> nn.Module | None:
    """The conv that reads a layer's or head predictor's input (None for a pool, shortcut or route)."""
    return module if isinstance(module, (nn.Conv2d, QDQConv)) else getattr(module, "conv", None)


def _readers(model: SSD, index: int) -> list[nn.Module | None]:
    """What reads backbone layer index's output: the next layer (through max-pools) and its head level's convs."""
    backbone = model.backbone
    layers = backbone.module_list
    readers: list[nn.Module | None] = []
    following = index + 1
    while following < len(layers) and isinstance(layers[following], nn.MaxPool2d):
        following += 1
    if following < len(layers):
        readers.append(_first_conv(layers[following]))
    if index in backbone.feature_layers:
        if str(index) in backbone.l2norms:
            return readers + [None]
        level = backbone.feature_layers.index(index)
        box_head = cast(BoxHead, model.box_head)
        readers += [_first_conv(heads[level]) for heads in (box_head.cls_headers, box_head.reg_headers)]
    return readers


def _share_grid(readers: list[nn.Module | None]) -> OutputQuant | None:
    """The output quantizer for a conv read by these modules (None if none is quantized); readers on its grid skip theirs."""
    quantized = [r for r in readers if isinstance(r, QDQConv)]
    if not quantized:
        return None
    grid = quantized[0].grid
    for reader in quantized:
        reader.quantize_input = reader.grid != grid
    return OutputQuant(grid)


def _quantize_separable(head: nn.Module) -> nn.Module:
    """An SSDLite predictor whose depthwise output is quantized for its pointwise conv."""
    parts = dict(head.named_children())
    if not isinstance(parts.get("conv"), QDQConv) or not isinstance(parts.get("pointwise"), QDQConv):
        return head
    shared = _share_grid([parts["pointwise"]])
    assert shared is not None  # the pointwise conv is a QDQConv
    return nn.Sequential(OrderedDict(conv=parts["conv"], act=parts["act"], output_quant=shared,
                                     pointwise=parts["pointwise"]))


def qdq_model(model: SSD) -> SSD:
    """The BN-fused IAO model with QDQ convs and output quantizers (a PyTorch module ready for ONNX export)."""
    spec: QuantSpec | None = model.quant_spec
    if spec is None or spec.kind != "IAO" or spec.wbits > 8 or spec.abits > 8:
        kind = "a float model" if spec is None else f"{spec.kind} W{spec.wbits}A{spec.abits}"
        raise ExportError(f"an int8 ONNX model needs IAO quantization with at most 8 bits, not {kind}; "
                          "export the float model with --format onnx, or train with QUANTIZATION.TYPE IAO")
    fused = fuse_model(model).cpu()
    _swap_convs(fused)
    box_head = cast(BoxHead, fused.box_head)
    for heads in (box_head.cls_headers, box_head.reg_headers):
        for level, head in enumerate(heads):
            heads[level] = _quantize_separable(head)
    backbone = fused.backbone
    for index, layer in enumerate(backbone.module_list):
        if isinstance(getattr(layer, "conv", None), QDQConv) and index not in backbone.shortcut_sources:
            shared = _share_grid(_readers(fused, index))
            if shared is not None:
                layer.add_module("output_quant", shared)
    return fused.eval()


def write_int8_onnx(model: SSD, out: Path, name: str, opset: int = 17) -> Path:
    """Export an IAO model's int8 QDQ graph to out/<name>.onnx and check that onnxruntime runs it."""
    wrapper = ScoresAndBoxes(qdq_model(model)).eval()
    size = model.cfg.INPUT.IMAGE_SIZE
    path, traced = out / f"{name}.onnx", out / f"{name}.float_weights.onnx"
    torch.onnx.export(wrapper, (torch.zeros(1, 3, size, size),), str(traced), input_names=["images"],
                      output_names=["scores", "boxes"], opset_version=opset, dynamo=False,
                      dynamic_axes={"images": {0: "batch"}, "scores": {0: "batch"}, "boxes": {0: "batch"}})
    store_int8_weights(traced, path)
    traced.unlink()
    scores, boxes = onnx_session(path).run(None, {"images": np.zeros((1, 3, size, size), np.float32)})
    priors = cast(Tensor, model.priors)
    if scores.shape[1] != len(priors) or not np.isfinite(boxes).all():
        raise ExportError(f"{path}: onnxruntime gave scores {scores.shape} for {len(priors)} priors; "
                          "please report this model")
    return path


def store_int8_weights(source: Path, target: Path) -> None:
    """Fold each weight's QuantizeLinear into an int8 initializer (onnxruntime's portable basic level)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(target)
    ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])


class OnnxDetector(nn.Module):
    """An exported ONNX detector in onnxruntime, called like model.eval() (detections per image)."""

    def __init__(self, path: str | Path | None, model: SSD, threads: int = 0, session=None):
        """path: the .onnx file; or (path None) session: an open one (anything with onnxruntime's run(None, feeds),
        e.g. another runtime's)."""
        super().__init__()
        if (path is None) == (session is None):
            raise ExportError("OnnxDetector takes an .onnx path or an open session, not both or neither")
        self.session = session if path is None else onnx_session(path, threads)
        self.image_size, self.test = model.cfg.INPUT.IMAGE_SIZE, model.cfg.TEST

    def forward(self, images: Tensor) -> list[dict[str, Tensor]]:
        """Post-processing of the graph's scores and boxes as in SSD.forward."""
        scores, boxes = self.session.run(None, {"images": images.detach().cpu().numpy()})
        boxes = (torch.from_numpy(boxes) * self.image_size).clamp(0, self.image_size)
        test = self.test
        return [detect_one(b, s, test.CONFIDENCE_THRESHOLD, test.NMS_THRESHOLD, test.MAX_PER_IMAGE,
                           test.PRE_NMS_TOP_K) for b, s in zip(boxes, torch.from_numpy(scores))]
