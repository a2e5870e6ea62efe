"""Integer-only reference inference: its NumPy pieces against torch, and whole-model agreement with fake-quant."""
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ssdlab.config import load_config
from ssdlab.course import baseline
from ssdlab.engine.evaluate import agreement
from ssdlab.engine.inference import predict
from ssdlab.errors import ExportError
from ssdlab.export import intref
from ssdlab.export.fuse import fuse_model
from ssdlab.model.build import build_model
from tests.conftest import TESTS
from tests.test_export import trained_like

COURSE_CONFIGS = TESTS.parent / "ssdlab" / "configs" / "course"


def test_fixed_point_multiplier_and_rounding_shift():
    m = np.array([0.3, 1e-4, 0.75, 1.0, 3.5])
    m0, r = intref.quantize_multiplier(m)
    assert ((m0 >= 2 ** 30) & (m0 < 2 ** 31)).all()
    np.testing.assert_allclose(m0 * 2.0 ** -r.astype(float), m, rtol=2 ** -30)
    acc = np.array([-1000, -7, 0, 7, 123456, 2 ** 31 - 1]).reshape(1, 1, -1, 1).repeat(5, axis=1)
    got = intref.requantize(acc, m)
    np.testing.assert_array_equal(got[0, 0, :, 0], [-300, -2, 0, 2, 37037, 644245094])  # 0.3·x rounded
    np.testing.assert_array_equal(got[0, 4, :, 0], np.floor(acc[0, 4, :, 0] * 3.5 + 0.5))  # M > 1 too


def test_codes_clamp_and_zero_point():
    value = intref.Real(np.array([-1.0, -0.26, 0.0, 0.24, 0.26, 100.0], np.float32).reshape(1, 1, -1, 1))
    np.testing.assert_array_equal(intref.codes(value, 0.5, 0, 8, True).ravel(), [-2, -1, 0, 0, 1, 127])
    np.testing.assert_array_equal(intref.codes(value, 0.5, 3, 4, False).ravel(), [1, 2, 3, 3, 4, 15])
    acc = intref.Acc(np.array([-41, 9, 31, 10 ** 6]).reshape(1, 1, -1, 1), np.array([0.05]))
    np.testing.assert_array_equal(intref.codes(acc, 1.0, 0, 8, True).ravel(), [-2, 0, 2, 127])  # 0.05·acc, clamped


@pytest.mark.parametrize("stride,padding,dilation,groups", [(1, 1, 1, 1), (2, 1, 1, 1), (1, 2, 2, 1), (2, 1, 1, 8),
                                                            (1, 0, 1, 2)])
def test_conv2d_matches_torch(stride, padding, dilation, groups):
    torch.manual_seed(0)
    x, w = torch.randn(2, 8, 11, 9), torch.randn(16, 8 // groups, 3, 3)
    expected = F.conv2d(x, w, None, stride, padding, dilation, groups).numpy()
    got = intref.conv2d(x.numpy(), w.numpy(), (stride, stride), (padding, padding), (dilation, dilation), groups)
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_integer_conv_is_exact():
    rng = np.random.default_rng(0)
    x, w = rng.integers(-128, 128, (1, 64, 6, 6)), rng.integers(-127, 128, (8, 64, 3, 3))
    got = intref.conv2d(x.astype(np.float64), w.astype(np.float64), (1, 1), (1, 1), (1, 1), 1)
    exact = F.conv2d(torch.from_numpy(x), torch.from_numpy(w), padding=1).numpy()  # int64 convolution in torch
    np.testing.assert_array_equal(got.astype(np.int64), exact)


@pytest.mark.parametrize("kernel,stride,padding,ceil", [(2, 2, 0, False), (3, 2, 1, True), (2, 2, 0, True),
                                                         (3, 1, 1, False)])
def test_max_pool_matches_torch_on_floats_and_int32(kernel, stride, padding, ceil):
    pool = torch.nn.MaxPool2d(kernel, stride, padding, ceil_mode=ceil)
    x = torch.randn(1, 3, 7, 5)
    np.testing.assert_array_equal(intref.max_pool(intref.Real(x.numpy()), pool).x, pool(x).numpy())
    ints = torch.randint(-1000, 1000, (1, 3, 7, 5))
    pooled = intref.max_pool(intref.Acc(ints.numpy().astype(np.int64), np.ones(3)), pool)
    np.testing.assert_array_equal(pooled.acc, pool(ints.double()).numpy())


def test_residual_add_in_integer():
    a = intref.Acc(np.array([10, -4]).reshape(1, 2, 1, 1), np.array([0.5, 0.25]))
    b = intref.Acc(np.array([3, 8]).reshape(1, 2, 1, 1), np.array([0.25, 1.0]))
    total = intref.add(a, b)
    np.testing.assert_array_equal(total.scale, [0.25, 0.25])
    np.testing.assert_allclose(intref.real(total).ravel(), [5.75, 7.0])


def test_integer_reference_agrees_with_fake_quant(calibrated_course_model):
    model, cfg, val = calibrated_course_model
    reference = intref.IntegerReference(model)
    fake, integer = predict(model, val, cfg, progress=False), predict(reference, val, cfg, progress=False)
    result = agreement(integer, fake)
    assert result["total"] > 100 and result["fraction"] >= 0.99, result
    # the quantized head outputs: requantized from int32 in fixed point (intref) or rounded from float
    # (fake quant) they may differ by a code where a value lies on a rounding boundary (two where an
    # input code differed too), so a detection close to a score threshold may flip
    assert agreement(integer, fake, min_score=0.5)["fraction"] >= 0.98
    assert reference.integer_share() > 0.95  # all but the float input layer
    images = torch.stack([val[i][0] for i in range(len(val))])
    with torch.no_grad():
        (cls, reg), (int_cls, int_reg) = model.forward_raw(images), reference.forward_raw(images)
    step = max(float(m.out_quant.params()[0]) for m in model.box_head.modules() if hasattr(m, "out_quant"))
    for ours, theirs in ((cls, int_cls), (reg, int_reg)):
        assert (ours - theirs).abs().max() <= 2 * step * 1.0001
        assert ((ours - theirs).abs() > 1e-6).float().mean() < 0.005


def test_integer_reference_on_a_residual_model(monkeypatch):
    """Shortcuts add two int32 maps; linear (activation-free) convs stay in int32 too."""
    torch.manual_seed(0)  # the random net (and so the agreement below) must not depend on the tests run before
    real_codes = intref.codes
    text = (TESTS.parent / "ssdlab" / "configs" / "backbones" / "course_residual.cfg").read_text()
    first, *rest = text.split("[convolutional]")[1:]
    quan = text.split("[convolutional]")[0] + "[convolutional]" + first + "".join(
        "[convolutional]\nquantization=1" + part for part in rest)
    cfg = load_config(COURSE_CONFIGS / "residual_shapes.yaml", ["QUANTIZATION.TYPE", "IAO"])
    model = trained_like(build_model(cfg, cfg_text=quan, imagenet=False), size=128)
    fused, fake = fuse_model(model), {}
    convs = (1, 3, 5, 6, 9)  # the first quantized convs; 9 reads the pooled sum of 4 and 6 (a linear conv)
    for index in convs:
        fused.backbone.module_list[index].register_forward_pre_hook(
            lambda module, inputs, i=index: fake.update({i: codes_of(module.conv.act_quant, inputs[0])}))
    x = torch.randn(2, 3, 128, 128) * 60
    with torch.no_grad():
        fused.forward_raw(x)
    seen = []
    monkeypatch.setattr(intref, "codes", lambda *args: seen.append(real_codes(*args)) or seen[-1])
    intref.IntegerReference(model).forward_raw(x)
    for index, got in zip(convs, seen):  # a random net amplifies rounding ties into 1-code differences layer by
        off = np.abs(got.astype(np.int64) - fake[index])  # layer (0.8% of layer 9's codes for some seeds)
        assert off.max() <= 1 and (off == 0).mean() > 0.99, index


def codes_of(quantizer, x: torch.Tensor) -> np.ndarray:
    """The integer codes a fake quantizer gives x."""
    return torch.round(quantizer(x) / quantizer.params()[0]).numpy().astype(np.int64)


def test_refuses_models_without_integer_arithmetic(tiny_cfg):
    with pytest.raises(ExportError, match="IAO model"):
        intref.IntegerReference(build_model(tiny_cfg()))
    dorefa = build_model(tiny_cfg("MODEL.BACKBONE.CFG", str(TESTS / "data" / "tiny_quan.cfg"),
                                  "QUANTIZATION.TYPE", "dorefa"))
    with pytest.raises(ExportError, match="not a dorefa W8A8"):
        intref.IntegerReference(dorefa)


def test_agreement_counts_label_and_iou():
    box = torch.tensor([[10.0, 10, 50, 50], [60, 60, 90, 90]])
    want = {0: {"boxes": box, "labels": torch.tensor([1, 2]), "scores": torch.tensor([0.9, 0.8])}}
    same = {0: {"boxes": box.clone(), "labels": torch.tensor([1, 2]), "scores": torch.tensor([0.9, 0.8])}}
    moved = {0: {"boxes": box + torch.tensor([[2.0, 0, 2, 0], [0, 0, 0, 0]]), "labels": torch.tensor([1, 3]),
                 "scores": torch.tensor([0.9, 0.8])}}
    assert agreement(same, want) == {"agreed": 2, "total": 2, "fraction": 1.0}
    assert agreement(moved, want)["agreed"] == 0  # IoU 0.9 < 0.99, and a changed label
    assert agreement(moved, want, iou=0.8)["agreed"] == 1


def test_eval_integer_cli_refuses_a_float_checkpoint(tmp_path):
    result = subprocess.run([sys.executable, "-m", "ssdlab", "eval", "--ckpt", str(baseline("plain")), "--integer"],
                            capture_output=True, text=True, cwd=tmp_path)  # no data there: refused before reading any
    assert result.returncode != 0 and "IAO model" in result.stderr and "Traceback" not in result.stderr


def test_iao_bias_lies_on_the_int32_grid(tiny_cfg):
    """Eval-mode IAO layers add the bias integer hardware adds: a multiple of s_input·s_weight[o]."""
    model = trained_like(build_model(tiny_cfg("MODEL.BACKBONE.CFG", str(TESTS / "data" / "tiny_quan.cfg"),
                                              "QUANTIZATION.TYPE", "IAO")))
    layer = model.backbone.module_list[2]
    weight, bias = layer.folded()
    step = layer.act_quant.params()[0] * weight.abs().amax(dim=(1, 2, 3)) / 127
    units = bias / step
    assert torch.allclose(units, units.round(), atol=1e-3) and units.abs().max() > 10
