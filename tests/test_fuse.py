"""BN fusion: the fused model computes what the unfused one does, float and quantized."""
import pytest
import torch
from torch import nn

from ssdlab.config import load_config
from ssdlab.export.fuse import count_batchnorms, fuse_conv_bn, fuse_model
from ssdlab.model.build import build_model

CASES = [("course/plain_shapes.yaml", "course_plain.cfg", None),
         ("course/residual_shapes.yaml", "course_residual.cfg", None),
         ("mobile_v2_ssd_voc0712.yaml", "mobilenet_v2_ssd.cfg", None),  # SSDLite head BN, bias-less convs
         ("mini_ssd_hand_fpga.yaml", "mini_ssd_fpga.cfg", None),
         ("course/plain_shapes.yaml", "course_plain_quan.cfg", ("IAO", 8)),
         ("course/plain_shapes.yaml", "course_plain_quan.cfg", ("dorefa", 4)),
         ("course/plain_shapes.yaml", "course_plain_quan.cfg", ("BWN", 2)),
         ("course/residual_shapes.yaml", "course_residual_quan.cfg", ("IAO", 8))]


def randomized(model: nn.Module) -> nn.Module:
    """BN with non-trivial statistics, so fusion has something to fold."""
    torch.manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2)
    return model


@pytest.mark.parametrize("recipe, backbone, quant", CASES, ids=lambda v: str(v))
def test_fused_model_matches(recipe, backbone, quant):
    overrides = ["MODEL.BACKBONE.PRETRAINED", "False", "MODEL.BACKBONE.CFG", backbone]
    if quant:
        kind, bits = quant
        overrides += ["QUANTIZATION.TYPE", kind, "QUANTIZATION.WBITS", str(bits), "QUANTIZATION.ABITS",
                      str(2 if kind == "BWN" else bits), "QUANTIZATION.FINAL", "True"]
    cfg = load_config(f"ssdlab/configs/{recipe}", overrides)
    model = randomized(build_model(cfg)).train()
    size = cfg.INPUT.IMAGE_SIZE
    with torch.no_grad():
        model.forward_raw(torch.randn(2, 3, size, size))  # activation ranges for IAO
    model.eval()
    fused = fuse_model(model)
    assert count_batchnorms(model) > 0 and count_batchnorms(fused) == 0
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        if quant is None:
            for a, b in zip(model.forward_raw(x), fused.forward_raw(x)):
                assert torch.allclose(a, b, atol=1e-4)
        else:  # layer by layer on the same inputs: a 1e-7 float difference fed forward could flip a rounding
            for a, b in layer_pairs(model, fused, x):
                assert torch.allclose(a, b, atol=1e-4)


def layer_pairs(model, fused, x):
    """(original, fused) outputs of every backbone layer and head, each fed the original's inputs."""
    kept, features = {}, []
    for i, (layer, other) in enumerate(zip(model.backbone.module_list, fused.backbone.module_list)):
        args = (x, kept[layer.source]) if hasattr(layer, "source") else (x,)
        out = layer(*args)
        yield out, other(*args)
        kept[i] = x = out
        if i in model.backbone.feature_layers:
            features.append(out)
    for name in ("cls_headers", "reg_headers"):
        for head, other, feature in zip(getattr(model.box_head, name), getattr(fused.box_head, name), features):
            yield head(feature), other(feature)


def test_fuse_conv_bn_by_hand_bias_less():
    conv = nn.Conv2d(1, 2, 1, bias=False)
    bn = nn.BatchNorm2d(2).eval()
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([2.0, -1.0]).view(2, 1, 1, 1))
        bn.weight.copy_(torch.tensor([1.0, 3.0]))
        bn.bias.copy_(torch.tensor([0.5, 0.0]))
        bn.running_mean.copy_(torch.tensor([1.0, 2.0]))
        bn.running_var.copy_(torch.tensor([4.0, 9.0]))
    bn.eps = 0.0
    fused = fuse_conv_bn(conv, bn)
    assert fused.weight.view(-1).tolist() == pytest.approx([2.0 * 1 / 2, -1.0 * 3 / 3])
    assert fused.bias.tolist() == pytest.approx([0.5 - 1.0 * 1 / 2, 0.0 - 2.0 * 3 / 3])


def test_eval_with_bn_fuse_scores_the_same(tiny_cfg, capsys):
    from ssdlab.__main__ import main
    from ssdlab.engine.train import train

    path = train(tiny_cfg("SOLVER.MAX_ITER", "6"), progress=False).checkpoint
    scores = []
    for fuse in ("False", "True"):
        assert main(["eval", "--ckpt", str(path), "TEST.BN_FUSE", fuse]) == 0
        line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("VOC mAP@0.5") and ": " in x)
        scores.append(float(line.rsplit(":", 1)[1]))
    assert scores[0] == pytest.approx(scores[1], abs=1e-6)
