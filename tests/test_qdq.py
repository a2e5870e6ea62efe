"""The int8 ONNX (QDQ) export of IAO models: its convs against the fake-quantized ones, onnxruntime fusion, detections."""
import pytest
import torch

from ssdlab.engine.evaluate import agreement
from ssdlab.engine.inference import predict
from ssdlab.errors import ExportError
from ssdlab.export.qdq import QDQConv, qdq_model, OnnxDetector
from ssdlab.export.runtime import onnx_session, optimized_ops
from ssdlab.export.weights import export_weights
from ssdlab.model.build import build_model
from ssdlab.quant.layers import QuantConv2d
from tests.conftest import TESTS, calibrated

ort = pytest.importorskip("onnxruntime")


def test_qdq_conv_computes_the_fake_quantized_conv(calibrated_course_model):
    model, _, _ = calibrated_course_model
    conv = next(m for m in model.box_head.modules() if isinstance(m, QuantConv2d))  # a head conv, signed inputs too
    x = torch.rand(1, conv.in_channels, 8, 8) * float(conv.act_quant.high)
    with torch.no_grad():
        assert torch.allclose(QDQConv(conv)(x), conv(x), atol=1e-5)


def conv_count(model) -> int:
    """Number of convs in a model."""
    return sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())


def test_every_quantized_conv_runs_as_qlinearconv(calibrated_course_model, tmp_path):
    model, cfg, val = calibrated_course_model
    out = export_weights(model, tmp_path / "int8", "onnx", name="course")
    ops = optimized_ops(out / "course.onnx")
    assert conv_count(model) == 21  # 9 backbone convs and 12 head convs
    assert ops.count("QLinearConv") == 20  # all but the input layer, which course_plain_quan.cfg leaves in float
    assert ops.count("QuantizeLinear") == 1  # the input layer's output, quantized once for layer 1
    onnx_dets = predict(OnnxDetector(out / "course.onnx", model), val, cfg, progress=False)
    fake = predict(model, val, cfg, progress=False)
    assert agreement(onnx_dets, fake, min_score=0.3, iou=0.9)["fraction"] >= 0.95


def test_a_marked_input_layer_makes_the_whole_graph_int8(all_int8_course_model, tmp_path):
    model, cfg, val = all_int8_course_model
    path = export_weights(model, tmp_path / "int8", "onnx", name="course") / "course.onnx"
    ops = optimized_ops(path)
    assert ops.count("QLinearConv") == conv_count(model) == 21
    assert "Conv" not in ops and "FusedConv" not in ops
    assert ops.count("QuantizeLinear") == 1  # the image, once; dequantized only before softmax and decoding
    onnx_dets = predict(OnnxDetector(path, model), val, cfg, progress=False)
    assert agreement(onnx_dets, predict(model, val, cfg, progress=False), min_score=0.3, iou=0.9)["fraction"] >= 0.95
    opened = predict(OnnxDetector(None, model, session=onnx_session(path)), val, cfg, progress=False)
    assert opened.keys() == onnx_dets.keys() and all(torch.equal(opened[i]["boxes"], onnx_dets[i]["boxes"]) for i in opened)
    for source, session in ((path, onnx_session(path)), (None, None)):
        with pytest.raises(ExportError, match="an .onnx path or an open session"):
            OnnxDetector(source, model, session=session)


def test_without_final_the_float_heads_read_dequantized_features(shapes_dir, tmp_path):
    model, _, _ = calibrated(shapes_dir)
    ops = optimized_ops(export_weights(model, tmp_path / "int8", "onnx", name="c") / "c.onnx")
    assert ops.count("QLinearConv") == 7  # backbone layers 1..12 less the last (it feeds only float heads)
    layers = qdq_model(model).backbone.module_list
    assert [i for i, layer in enumerate(layers) if hasattr(layer, "output_quant")] == [1, 3, 5, 7, 8, 10, 11]


def test_readers_on_the_producers_grid_take_its_codes(calibrated_course_model):
    fused = qdq_model(calibrated_course_model[0])
    layers, heads = fused.backbone.module_list, fused.box_head
    assert [i for i, layer in enumerate(layers) if hasattr(layer, "output_quant")] == [1, 3, 5, 7, 8, 10, 11, 12]
    # layer 3 (head level 0) is read by layer 5 through a max-pool and by both level-0 head convs
    grid = layers[3].output_quant.grid
    for reader in (layers[5].conv, heads.cls_headers[0], heads.reg_headers[0]):
        assert reader.grid == grid and not reader.quantize_input  # max-pooling keeps the observed max
    assert all(head.output is not None for head in heads.cls_headers)  # logits quantized too (out_quant)


def test_refuses_models_it_cannot_express(tiny_cfg, tmp_path):
    dorefa = build_model(tiny_cfg("MODEL.BACKBONE.CFG", str(TESTS / "data" / "tiny_quan.cfg"),
                                  "QUANTIZATION.TYPE", "dorefa"))
    with pytest.raises(ExportError, match="IAO quantization with at most 8 bits"):
        export_weights(dorefa, tmp_path / "x", "onnx")
    assert not (tmp_path / "x").exists() and not list(tmp_path.glob(".x.*"))
