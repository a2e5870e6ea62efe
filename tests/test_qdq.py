"""The int8 ONNX (QDQ) export of IAO models: its convs against the fake-quantized ones, onnxruntime fusion, detections."""
import pytest
import torch

from ssdlab.engine.inference import predict
from ssdlab.errors import ExportError
from ssdlab.engine.evaluate import agreement
from ssdlab.export.qdq import QDQConv, qdq_model
from ssdlab.export.weights import export_weights
from ssdlab.model.ssd import build_model
from ssdlab.quant.layers import QuantConv2d
from tests.conftest import TESTS

ort = pytest.importorskip("onnxruntime")


def test_qdq_conv_computes_the_fake_quantized_conv(calibrated_course_model):
    model, _, _ = calibrated_course_model
    conv = next(m for m in model.box_head.modules() if isinstance(m, QuantConv2d))  # a head conv, signed inputs too
    x = torch.rand(1, conv.in_channels, 8, 8) * float(conv.act_quant.high)
    with torch.no_grad():
        assert torch.allclose(QDQConv(conv)(x), conv(x), atol=1e-5)


def test_int8_onnx_is_fused_by_onnxruntime_and_agrees(calibrated_course_model, tmp_path):
    model, cfg, val = calibrated_course_model
    out = export_weights(model, tmp_path / "int8", "onnx", name="course")
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(out / "course.onnx"), options, providers=["CPUExecutionProvider"])
    import onnx

    ops = [node.op_type for node in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]
    assert ops.count("QLinearConv") >= 6  # the quantized backbone convs run as int8 kernels
    from ssdlab.export.qdq import OnnxDetector

    onnx_dets = predict(OnnxDetector(out / "course.onnx", model), val, cfg, progress=False)
    fake = predict(model, val, cfg, progress=False)
    assert agreement(onnx_dets, fake, min_score=0.3, iou=0.9)["fraction"] >= 0.95


def test_output_quantizers_sit_before_quantized_consumers_only(calibrated_course_model):
    layers = qdq_model(calibrated_course_model[0]).backbone.module_list
    with_output = [i for i, layer in enumerate(layers) if hasattr(layer, "output_quant")]
    assert with_output == [1, 3, 5, 7, 8, 10, 11]  # layer 12 feeds only the heads; layer 0 is float


def test_refuses_models_it_cannot_express(tiny_cfg, tmp_path):
    dorefa = build_model(tiny_cfg("MODEL.BACKBONE.CFG", str(TESTS / "data" / "tiny_quan.cfg"),
                                  "QUANTIZATION.TYPE", "dorefa"))
    with pytest.raises(ExportError, match="IAO quantization with at most 8 bits"):
        export_weights(dorefa, tmp_path / "x", "onnx")
    assert not (tmp_path / "x").exists() and not list(tmp_path.glob(".x.*"))
