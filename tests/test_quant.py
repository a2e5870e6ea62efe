"""Quantization-aware training: quantizers by hand, straight-through gradients, IAO folding, QAT runs."""
import copy

import numpy as np
import pytest
import torch
from torch import nn

import ssdlab
from ssdlab.engine.profile import MIB, size_mib
from ssdlab.engine.train import train
from ssdlab.errors import ConfigError, QuantError
from ssdlab.model.build import build_model
from ssdlab.quant import quantizers as q
from ssdlab.quant.layers import ActQuant, IAOConvBN, QuantConv2d, QuantSpec
from tests.conftest import TESTS

QUAN = ["MODEL.BACKBONE.CFG", str(TESTS / "data" / "tiny_quan.cfg")]


def test_dorefa_weights_have_2_to_the_k_levels_in_minus_one_one():
    w = torch.atanh(torch.linspace(-0.99, 0.99, 20001))  # tanh(w) uniform: every level is hit
    for bits in (2, 3, 8):
        out = q.dorefa_weight(w, bits)
        assert len(out.unique()) == 2 ** bits
        assert out.min().item() == pytest.approx(-1.0) and out.max().item() == pytest.approx(1.0)
    assert sorted(q.dorefa_weight(w, 2).unique().tolist()) == pytest.approx([-1, -1 / 3, 1 / 3, 1])


def test_dorefa_activation_by_hand_and_its_gradient():
    x = torch.tensor([-1.0, 0.01, 0.5, 5.0, 20.0], requires_grad=True)
    out = q.dorefa_activation(x, 2, scale=0.1)  # clamp(0.1x) = 0, .001, .05, .5, 1 -> x3, round -> 0, 0, 0, 2, 3
    assert out.tolist() == pytest.approx([0, 0, 0, 2 / 3, 1])
    out.sum().backward()
    assert x.grad.tolist() == pytest.approx([0, 0.1, 0.1, 0.1, 0])  # cut outside 0 < 0.1x < 1


def test_iao_symmetric_per_channel_weights():
    w = torch.tensor([[0.5, -1.0], [4.0, 1.0]]).view(2, 2, 1, 1)
    out = q.iao_weight(w, 8)
    scales = torch.tensor([1.0, 4.0]) / 127
    expected = torch.round(w / scales.view(2, 1, 1, 1)) * scales.view(2, 1, 1, 1)
    assert torch.allclose(out, expected)
    assert out[0].abs().max().item() == pytest.approx(1.0) and out[1].abs().max().item() == pytest.approx(4.0)
    assert len(q.iao_weight(torch.randn(1, 1000), 4).unique()) <= 16


def test_iao_asymmetric_zero_point_and_clamping():
    scale, zero = q.asymmetric_params(torch.tensor(-1.0), torch.tensor(3.0), 8)
    assert scale.item() == pytest.approx(4 / 255) and zero.item() == 64  # round(1 / (4/255)) = round(63.75)
    x = torch.tensor([0.0, -2.0, 1.0, 10.0])
    out = q.fake_asymmetric(x, scale, zero, 8)
    assert out[0].item() == 0.0  # zero is exact
    assert out[1].item() == pytest.approx(-64 * 4 / 255)  # clamped at code 0
    assert out[3].item() == pytest.approx((255 - 64) * 4 / 255)  # clamped at code 255
    scale, zero = q.asymmetric_params(torch.tensor(0.5), torch.tensor(2.0), 8)  # range stretched to include 0
    assert zero.item() == 0 and scale.item() == pytest.approx(2 / 255)


def test_bwn_binary_and_ternary_by_hand():
    w = torch.tensor([[1.0, -3.0, 0.1, 0.2], [0.5, 0.5, -0.5, 0.5]]).view(2, 4, 1, 1)
    binary = q.binary_weight(w).view(2, 4)
    assert binary[0].tolist() == pytest.approx([1.075, -1.075, 1.075, 1.075])  # alpha = mean|w|
    assert binary[1].tolist() == pytest.approx([0.5, 0.5, -0.5, 0.5])
    ternary = q.ternary_weight(w).view(2, 4)  # delta = 0.7 * 1.075: keeps 1 and -3, alpha = 2
    assert ternary[0].tolist() == pytest.approx([2.0, -2.0, 0.0, 0.0])
    assert ternary[1].tolist() == pytest.approx([0.5, 0.5, -0.5, 0.5])


def test_straight_through_gradients():
    x = torch.tensor([-2.0, -0.5, 0.3, 1.5], requires_grad=True)
    q.binary_activation(x).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 0.0]  # passed only where |x| < 1
    w = torch.randn(3, 4, 1, 1, requires_grad=True)
    q.binary_weight(w).sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))
    y = torch.tensor([-300.0, 0.3, 1.5], requires_grad=True)
    q.fake_symmetric(y, torch.tensor(0.01), 8).sum().backward()
    assert y.grad.tolist() == [0.0, 1.0, 0.0]  # cut where the code is clamped to [-128, 127]



def _curves_by_numpy(x: np.ndarray, bits: int, s: float = 0.1) -> dict:
    """Each transfer curve computed anew from the formulas (float64 numpy)."""
    top, half = 2 ** bits - 1, 2 ** (bits - 1)
    t = np.tanh(x)
    scale = np.abs(x).max() / (half - 1)
    low, high = min(x.min(), 0.0), max(x.max(), 0.0)
    a_scale = (high - low) / top
    zero = np.clip(np.round(-low / a_scale), 0, top)
    delta = 0.7 * np.abs(x).mean()
    keep = np.abs(x) > delta
    return {"dorefa_weight": 2 * np.round((t / (2 * np.abs(t).max()) + 0.5) * top) / top - 1,
            "dorefa_activation": np.round(np.clip(s * x, 0, 1) * top) / top,
            "iao_symmetric": np.clip(np.round(x / scale), -half, half - 1) * scale,
            "iao_asymmetric": (np.clip(np.round(x / a_scale) + zero, 0, top) - zero) * a_scale,
            "binary_weight": np.abs(x).mean() * np.where(x >= 0, 1.0, -1.0),
            "ternary_weight": np.abs(x)[keep].mean() * np.sign(x) * keep,
            "binary_activation": np.sign(x)}


@pytest.mark.parametrize("bits", [2, 3, 8])
def test_transfer_curves_match_the_formulas(bits):
    x = np.array([-0.93, -0.61, -0.37, -0.12, 0.04, 0.21, 0.48, 0.77, 1.31, 3.7, 12.4])
    expected = _curves_by_numpy(x, bits)
    assert set(expected) == set(q.CURVES)
    for name, values in expected.items():
        out = q.transfer_curve(name, torch.tensor(x, dtype=torch.float32), bits)
        assert out.shape == (len(x),) and out.tolist() == pytest.approx(values.tolist(), abs=1e-5), name


def test_transfer_curve_levels_and_unknown_names():
    x = torch.linspace(-1, 1, 2001)
    assert len(q.transfer_curve("dorefa_weight", x, 2).unique()) == 4
    assert sorted(q.transfer_curve("iao_symmetric", x, 2).unique().tolist()) == [-1, 0, 1]  # code -2 unused
    assert len(q.transfer_curve("iao_asymmetric", torch.linspace(-0.5, 1.5, 2001), 3).unique()) == 8
    assert sorted(q.transfer_curve("ternary_weight", x, 8).unique().tolist()) == pytest.approx([-0.675, 0, 0.675],
                                                                                                abs=1e-3)
    with pytest.raises(QuantError, match="dorefa_weight"):
        q.transfer_curve("dorefa", x, 4)


def test_bwn_forward_values_are_exact():
    w = torch.randn(16, 24, 3, 3, requires_grad=True)
    for quantize, per_channel in ((q.binary_weight, 2), (q.ternary_weight, 3)):
        out = quantize(w)
        assert max(len(channel.unique()) for channel in out.detach()) == per_channel  # α·{−1, (0,) 1}, no rounding
    assert q.binary_activation(torch.randn(1000)).unique().tolist() == [-1.0, 1.0]

def test_observers_move_only_in_training():
    observer = ActQuant(QuantSpec("IAO", 8, 8))
    observer.train()
    observer(torch.tensor([-1.0, 2.0]))
    assert (observer.low.item(), observer.high.item()) == (-1.0, 2.0)  # first batch sets the range
    observer(torch.tensor([-3.0, 4.0]))
    assert observer.low.item() == pytest.approx(-1.2) and observer.high.item() == pytest.approx(2.2)
    observer.eval()
    observer(torch.tensor([-50.0, 50.0]))
    assert observer.high.item() == pytest.approx(2.2)
    observer.train()
    observer.frozen = True
    observer(torch.tensor([-50.0, 50.0]))
    assert observer.high.item() == pytest.approx(2.2)


def test_an_iao_observer_that_saw_nothing_passes_its_input_through():
    observer = ActQuant(QuantSpec("IAO", 8, 8)).eval()
    x = torch.tensor([-1.234, 0.5, 7.0])
    assert torch.equal(observer(x), x)  # a float checkpoint evaluated before QAT or calibration stays float
    observer.train()
    observer(x)
    assert not torch.equal(observer.eval()(x), x)  # on the grid once a range was observed


@pytest.mark.parametrize("mode", ["symmetric", "asymmetric"])
def test_an_iao_head_conv_quantizes_its_output_on_its_own_grid(mode):
    spec = QuantSpec("IAO", 8, 8, mode=mode)
    torch.manual_seed(0)
    head = QuantConv2d(nn.Conv2d(4, 6, 3, padding=1), spec, output=True).train()
    x = torch.randn(2, 4, 5, 5)
    head(x)  # observes input and output ranges
    y = head.eval()(x)
    scale, zero = head.out_quant.params()
    codes = y / scale + zero
    assert torch.allclose(codes, codes.round(), atol=1e-3)  # every output a code times the scale
    assert int(codes.round().unique().numel()) > 50
    assert not hasattr(QuantConv2d(nn.Conv2d(4, 6, 3), QuantSpec("dorefa", 8, 8), output=True), "out_quant")


@pytest.mark.parametrize("training", [False, True])
def test_iao_folded_conv_bn_equals_conv_then_bn_without_quantization(training):
    torch.manual_seed(0)
    block = nn.Sequential()
    block.conv, block.bn, block.act = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU()
    with torch.no_grad():
        block.bn.weight.uniform_(0.5, 2)
        block.bn.bias.uniform_(-1, 1)
        block.bn.running_mean.uniform_(-0.5, 0.5)
        block.bn.running_var.uniform_(0.5, 2)
    reference = copy.deepcopy(block)
    folded = IAOConvBN(copy.deepcopy(block), QuantSpec("IAO", 32, 32))
    x = torch.randn(4, 3, 10, 10)
    reference.train(training)
    folded.train(training)
    target = torch.randn(4, 8, 10, 10)  # a loss whose gradient reaches every weight
    out, expected = folded(x), reference(x)
    assert torch.allclose(out, expected, atol=1e-5)
    ((out - target) ** 2).sum().backward()
    ((expected - target) ** 2).sum().backward()
    for name in ("conv.weight", "bn.weight", "bn.bias"):  # in training, also through the batch mean and variance
        mine, theirs = folded.get_parameter(name).grad, reference.get_parameter(name).grad
        assert torch.allclose(mine, theirs, rtol=1e-4, atol=1e-4), name


def test_bad_quantization_settings_name_the_key(tiny_cfg):
    for overrides, key in [(["QUANTIZATION.TYPE", "int8"], "QUANTIZATION.TYPE"),
                           (["QUANTIZATION.TYPE", "IAO", "QUANTIZATION.IAO_MODE", "affine"], "QUANTIZATION.IAO_MODE")]:
        with pytest.raises(ConfigError, match=f"command line: {key} = .* is unknown"):  # words: where they are set
            tiny_cfg(*QUAN, *overrides)
    for overrides, key in [(["QUANTIZATION.TYPE", "dorefa", "QUANTIZATION.WBITS", "1"], "QUANTIZATION.WBITS"),
                           (["QUANTIZATION.TYPE", "BWN", "QUANTIZATION.WBITS", "4"], "QUANTIZATION.WBITS"),
                           (["QUANTIZATION.TYPE", "BWN", "QUANTIZATION.WBITS", "2", "QUANTIZATION.ABITS", "8"],
                            "QUANTIZATION.ABITS")]:
        with pytest.raises(QuantError, match=key):  # bit widths: per type, when the model is built
            build_model(tiny_cfg(*QUAN, *overrides))
    with pytest.raises(QuantError, match="quantization=1"):
        build_model(tiny_cfg("QUANTIZATION.TYPE", "IAO"))  # tiny.cfg marks no layer


def test_size_counts_quantized_weights_at_their_bits(tiny_cfg):
    model = build_model(tiny_cfg(*QUAN, "QUANTIZATION.TYPE", "BWN", "QUANTIZATION.WBITS", "3",
                                 "QUANTIZATION.ABITS", "32"))
    bits = 0
    for i, block in enumerate(model.backbone.module_list):
        bits += block.conv.weight.numel() * (2 if i > 0 else 32)  # ternary = 2 bits, layer 0 stays float
        bits += (block.conv.bias.numel() + sum(p.numel() for p in block.bn.parameters())) * 32
    bits += sum(p.numel() for p in model.box_head.parameters()) * 32
    assert size_mib(model) == pytest.approx(bits / 8 / MIB)
    assert isinstance(model.backbone.module_list[1].conv, QuantConv2d)


@pytest.mark.slow
@pytest.mark.parametrize("kind, wbits, abits", [("dorefa", 8, 8), ("IAO", 8, 8), ("BWN", 2, 2), ("BWN", 3, 32)])
def test_qat_runs_and_the_checkpoint_rebuilds_the_quantized_model(tiny_cfg, kind, wbits, abits):
    float_run = train(tiny_cfg("SOLVER.MAX_ITER", "4", out="float"), progress=False)
    cfg = tiny_cfg(*QUAN, "QUANTIZATION.TYPE", kind, "QUANTIZATION.WBITS", str(wbits), "QUANTIZATION.ABITS",
                   str(abits), "QUANTIZATION.FINAL", "True", "MODEL.FINE_TUNE", "True",
                   "MODEL.WEIGHTS", str(float_run.checkpoint), "SOLVER.MAX_ITER", "4", out="qat")
    result = train(cfg, progress=False)
    assert result.finished and 0.0 <= result.metrics["voc_map"] <= 1.0
    model = ssdlab.load(result.checkpoint)
    layer = model.backbone.module_list[1]
    assert isinstance(layer, IAOConvBN) if kind == "IAO" else isinstance(layer.conv, QuantConv2d)
    assert isinstance(model.box_head.cls_headers[0], QuantConv2d)
    assert not isinstance(model.backbone.module_list[0].conv, QuantConv2d)
    x = torch.randn(2, 3, 64, 64)
    again = ssdlab.load(result.checkpoint)
    with torch.no_grad():
        assert torch.equal(model.forward_raw(x)[0], again.forward_raw(x)[0])
    if kind == "IAO":
        assert bool(layer.act_quant.initialized) and layer.act_quant.high > layer.act_quant.low
        head = model.box_head.cls_headers[0].out_quant  # FINAL: the logits are quantized, their range learned
        assert bool(head.initialized) and head.high > 0 > head.low


def _randomized(model):
    """Spread γ (some tiny), β and the BN statistics so that pruning has something to do."""
    torch.manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand_like(m.weight) * torch.where(torch.rand_like(m.weight) < 0.5, 0.01, 1.0))
                m.bias.uniform_(-0.5, 0.5)
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2)
    return model


@pytest.mark.parametrize("kind, bits, mode", [("IAO", 8, "symmetric"), ("IAO", 4, "asymmetric"), ("dorefa", 8, "symmetric"),
                                              ("dorefa", 4, "symmetric")])
@pytest.mark.parametrize("prune_mode", ["normal", "shortcut"])
def test_quantize_then_prune_compact_equals_masked(tiny_cfg, kind, bits, mode, prune_mode):
    from ssdlab.prune.surgery import compact_model, make_plan, masked_model

    cfg = tiny_cfg(*QUAN, "QUANTIZATION.TYPE", kind, "QUANTIZATION.WBITS", str(bits), "QUANTIZATION.ABITS", str(bits),
                   "QUANTIZATION.IAO_MODE", mode, "QUANTIZATION.FINAL", "True")
    model = _randomized(build_model(cfg)).train()
    with torch.no_grad():
        model.forward_raw(torch.randn(4, 3, 64, 64))  # sets the activation ranges
    model.eval()
    result = make_plan(model, 0.5, prune_mode)
    masked = masked_model(model, result, "compensated")
    compact = compact_model(masked, result)
    assert isinstance(compact.backbone.module_list[1], IAOConvBN if kind == "IAO" else nn.Sequential)
    assert compact.backbone.module_list[1].conv.weight.shape[0] < 32
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(masked.forward_raw(x), compact.forward_raw(x)):
            close = (a - b).abs() <= 1e-4
            # summing in another order can flip a value sitting on a rounding boundary by one step
            assert close.float().mean() >= 0.999, (a - b).abs().max()


def test_bwn_quantize_then_prune_is_refused_with_the_reason(tiny_cfg):
    from ssdlab.errors import PruneError
    from ssdlab.prune.surgery import make_plan, masked_model

    model = build_model(tiny_cfg(*QUAN, "QUANTIZATION.TYPE", "BWN", "QUANTIZATION.WBITS", "2",
                                 "QUANTIZATION.ABITS", "2")).eval()
    with pytest.raises(PruneError, match="prune-then-quantize"):
        masked_model(model, make_plan(model, 0.3), "compensated")


@pytest.mark.slow
def test_prune_then_quantize_through_the_cli(tiny_cfg, tmp_path):
    import subprocess
    import sys

    from ssdlab.prune.report import prune_checkpoint

    sparse = train(tiny_cfg("SOLVER.MAX_ITER", "4", "PRUNE.TYPE", "normal", out="sparse"), progress=False).checkpoint
    pruned = prune_checkpoint(sparse, tiny_cfg(), 0.4, quick=True, out_dir=tmp_path, tag="p40").files["checkpoint"]
    cfg = tiny_cfg(out="qat")
    done = subprocess.run([sys.executable, "-m", "ssdlab", "quantize", "--config-file", str(TESTS / "data" / "tiny.yaml"),
                           "--ckpt", str(pruned), *QUAN, "QUANTIZATION.TYPE", "IAO", "SOLVER.MAX_ITER", "3",
                           "DATASETS.TRAIN", str(list(cfg.DATASETS.TRAIN)), "DATASETS.TEST", str(list(cfg.DATASETS.TEST)),
                           "OUTPUT_DIR", cfg.OUTPUT_DIR], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    model = ssdlab.load(f"{cfg.OUTPUT_DIR}/model_final.pt")
    widths = [layer["filters"] for layer in model.backbone.defs]
    assert widths == [layer["filters"] for layer in ssdlab.load(pruned).backbone.defs] and sum(widths) < 128
    assert isinstance(model.backbone.module_list[1], IAOConvBN) and model.quant_spec.kind == "IAO"


@pytest.mark.slow
def test_sparse_qat_then_prune_gives_a_quantized_compact_checkpoint(tiny_cfg, tmp_path):
    from ssdlab.prune.report import prune_checkpoint

    cfg = tiny_cfg(*QUAN, "QUANTIZATION.TYPE", "IAO", "PRUNE.TYPE", "normal", "PRUNE.SR", "0.05",
                   "SOLVER.MAX_ITER", "4", out="sparse_qat")
    sparse = train(cfg, progress=False).checkpoint
    report = prune_checkpoint(sparse, cfg, 0.3, quick=True, out_dir=tmp_path, tag="q")
    compact = ssdlab.load(report.files["checkpoint"])
    assert isinstance(compact.backbone.module_list[1], IAOConvBN)
    assert sum(layer["filters"] for layer in compact.backbone.defs) < 128
    original, small = report.rows[0], report.rows[-1]
    assert small["size_mib"] < original["size_mib"] and small["params"] == report.plan.params_after
