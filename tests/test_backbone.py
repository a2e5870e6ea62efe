"""Tests for CfgBackbone, the ImageNet weight mapping and the shipped cfgs/recipes."""
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from ssdlab.config import load_config
from ssdlab.errors import CheckpointError
from ssdlab.model.backbone import CfgBackbone, L2Norm, Shortcut, load_backbone_cfg
from ssdlab.model.cfg import feature_layers, infer_channels, parse_cfg, read_cfg
from ssdlab.model.pretrained import arch_of, conv_units, load_imagenet_weights, map_state_dict

CONFIGS = Path(__file__).resolve().parents[1] / "ssdlab" / "configs"
BACKBONES = CONFIGS / "backbones"
RECIPES = sorted(CONFIGS.glob("*.yaml")) + sorted((CONFIGS / "course").glob("*.yaml"))

VGG300 = (300, [38, 19, 10, 5, 3, 1], [512, 1024, 512, 256, 256, 256])
PLAIN = (128, [32, 16, 8, 4, 2, 1], [64, 96, 192, 192, 128, 128])
RESIDUAL = (128, [32, 16, 8, 4, 2, 1], [64, 64, 128, 128, 128, 128])
# cfg file -> (input size, feature-map sizes, head channels), from REFERENCE §1-2 and the course design
EXPECTED = {
    "vgg_bn_ssd300.cfg": VGG300,
    "vgg_bn_ssd300_fpga.cfg": VGG300,
    "vgg_bn_ssd300_quan.cfg": VGG300,
    "vgg_bn_ssd300_fpga_quan.cfg": VGG300,
    "vgg_bn_ssd512.cfg": (512, [64, 32, 16, 8, 4, 2, 1], [512, 1024, 512, 256, 256, 256, 256]),
    "mobilenet_v2_ssd.cfg": (320, [20, 10, 5, 3, 2, 1], [96, 1280, 512, 256, 256, 64]),
    "mini_ssd_fpga.cfg": (416, [52], [128]),
    "course_plain.cfg": PLAIN,
    "course_plain_quan.cfg": PLAIN,
    "course_plain_int8.cfg": PLAIN,
    "course_residual.cfg": RESIDUAL,
    "course_residual_quan.cfg": RESIDUAL,
}
MINI_304 = (304, [38], [128])


def build(name: str, device: str = "cpu") -> CfgBackbone:
    """A shipped backbone in eval mode, built on device ('meta' builds shapes only)."""
    layers, _ = load_backbone_cfg(BACKBONES / name)
    with torch.device(device):
        return CfgBackbone(layers, source=name).eval()


def run_until(backbone: CfgBackbone, x: torch.Tensor, last: int) -> torch.Tensor:
    """Output of cfg layer `last` for a net without shortcuts before it."""
    for module in backbone.module_list[:last + 1]:
        x = module(x)
    return x


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shipped_cfg_feature_sizes(name):
    """Shapes through the real forward code on the meta device (no arithmetic), at the recipe's size."""
    size, sizes, channels = EXPECTED[name]
    backbone = build(name, device="meta")
    features = backbone(torch.empty(1, 3, size, size, device="meta"))
    assert [tuple(f.shape) for f in features] == [(1, c, s, s) for c, s in zip(channels, sizes)]
    assert backbone.out_channels == channels


def test_every_shipped_cfg_has_an_expectation():
    assert sorted(p.name for p in BACKBONES.glob("*.cfg")) == sorted(EXPECTED)


@pytest.mark.parametrize("name,size,sizes", [("course_plain.cfg", 128, [32, 16, 8, 4, 2, 1]),
                                             ("course_residual.cfg", 128, [32, 16, 8, 4, 2, 1]),
                                             ("mini_ssd_fpga.cfg", 304, [38])])
def test_small_backbones_run_for_real(name, size, sizes):
    torch.manual_seed(0)
    with torch.no_grad():
        features = build(name)(torch.randn(1, 3, size, size))
    assert [f.shape[-1] for f in features] == sizes
    assert all(torch.isfinite(f).all() and f.abs().sum() > 0 for f in features)


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_recipe_loads_and_matches_its_cfg(recipe):
    cfg = load_config(recipe)
    name = Path(cfg.MODEL.BACKBONE.CFG).name
    size, sizes, channels = MINI_304 if (name, cfg.INPUT.IMAGE_SIZE) == ("mini_ssd_fpga.cfg", 304) else EXPECTED[name]
    priors = cfg.MODEL.PRIORS
    assert cfg.INPUT.IMAGE_SIZE == size
    assert priors.FEATURE_MAPS == sizes
    layers = read_cfg(cfg.MODEL.BACKBONE.CFG)
    widths = infer_channels(layers, cfg.INPUT.CHANNELS)
    assert [widths[i] for i in feature_layers(layers)] == channels
    levels = len(sizes)
    assert all(len(v) == levels for v in (priors.STRIDES, priors.MIN_SIZES, priors.MAX_SIZES,
                                         priors.ASPECT_RATIOS, priors.BOXES_PER_LOCATION))
    assert priors.BOXES_PER_LOCATION == [2 + 2 * len(r) for r in priors.ASPECT_RATIOS]
    assert all(lo < hi for lo, hi in zip(priors.MIN_SIZES, priors.MAX_SIZES))


def test_recipe_details():
    coco = load_config(CONFIGS / "vgg_bn_ssd300_coco.yaml")
    assert coco.MODEL.NUM_CLASSES == 81 and coco.MODEL.PRIORS.MIN_SIZES == [21, 45, 99, 153, 207, 261]
    assert coco.DATASETS.TEST == ["coco_2014_minival"]
    mobile = load_config(CONFIGS / "mobile_v2_ssd_voc0712.yaml")
    assert mobile.MODEL.BOX_HEAD.PREDICTOR == "SSDLiteBoxPredictor"
    assert mobile.DATASETS.TRAIN == ["voc_2007_trainval", "voc_2012_trainval"]
    assert load_config(CONFIGS / "mobile_v2_ssd_hand_shortcut_sparse.yaml").PRUNE.TYPE == "shortcut"
    iao = load_config(CONFIGS / "vgg_bn_ssd300_hand_fpga_sparse_quan_w8a8_IAO.yaml")
    assert (iao.QUANTIZATION.TYPE, iao.QUANTIZATION.WBITS, iao.QUANTIZATION.ABITS) == ("IAO", 8, 8)
    assert iao.MODEL.BACKBONE.CFG.endswith("vgg_bn_ssd300_fpga_quan.cfg")
    for name in ("plain_shapes.yaml", "residual_shapes.yaml"):
        course = load_config(CONFIGS / "course" / name)
        assert course.MODEL.NUM_CLASSES == 6 and course.DATASETS.TRAIN == ["shapes_train"]
        assert min(course.MODEL.PRIORS.MIN_SIZES) <= 0.08 * 128 + 1 and max(course.MODEL.PRIORS.MAX_SIZES) >= 0.6 * 128


# ---- hand-worked small nets ----

def test_modules_follow_the_cfg():
    text = ("[convolutional]\nbatch_normalize=1\nfilters=4\nsize=3\npad=1\nbias=0\nactivation=leaky\n"
            "[depthwise]\nfilters=4\nsize=3\nstride=2\npad=1\nactivation=h_swish\n"
            "[maxpool]\nsize=2\nstride=2\nceil_mode=1\n"
            "[convolutional]\nfilters=4\nsize=1\nactivation=relu6\nbackbone=1\n"
            "[shortcut]\nfrom=-2\nfeature=l2_norm\nfeature_idx=0\n")
    net = CfgBackbone(parse_cfg(text))
    first, depthwise, pool, last, short = net.module_list
    assert [name for name, _ in first.named_children()] == ["conv", "bn", "act"]
    assert first.conv.bias is None and isinstance(first.act, nn.LeakyReLU) and first.act.negative_slope == 0.1
    assert depthwise.conv.groups == 4 and depthwise.conv.stride == (2, 2) and isinstance(depthwise.act, nn.Hardswish)
    assert [name for name, _ in depthwise.named_children()] == ["conv", "act"]
    assert isinstance(pool, nn.MaxPool2d) and pool.ceil_mode
    assert isinstance(last.act, nn.ReLU6)
    assert isinstance(short, Shortcut) and short.source == 2 and not list(short.parameters())
    assert list(net.l2norms) == ["4"] and torch.equal(net.l2norms["4"].weight, torch.full((4,), 20.0))
    assert net.channels == [4, 4, 4, 4, 4] and net.out_channels == [4] and net.backbone_end == 3
    assert CfgBackbone(parse_cfg(text.replace("backbone=1\n", ""))).backbone_end == -1


def test_forward_matches_hand_computation():
    text = ("[convolutional]\nfilters=3\nsize=3\npad=1\nactivation=relu\n"
            "[maxpool]\nsize=2\nstride=2\nceil_mode=1\n"
            "[convolutional]\nfilters=3\nsize=1\nfeature=linear\nfeature_idx=1\n"
            "[shortcut]\nfrom=-2\nfeature=l2_norm\nfeature_idx=0\n")
    torch.manual_seed(0)
    net = CfgBackbone(parse_cfg(text)).eval()
    x = torch.randn(2, 3, 7, 7)
    c0, c2 = net.module_list[0].conv, net.module_list[2].conv
    a = F.relu(F.conv2d(x, c0.weight, c0.bias, padding=1))
    p = F.max_pool2d(a, 2, 2, ceil_mode=True)
    b = F.conv2d(p, c2.weight, c2.bias)
    s = b + p
    expected0 = s / s.pow(2).sum(1, keepdim=True).sqrt() * 20
    level0, level1 = net(x)
    assert level0.shape == (2, 3, 4, 4)
    torch.testing.assert_close(level0, expected0)
    torch.testing.assert_close(level1, b)


def test_residual_blocks_start_as_the_identity():
    net = CfgBackbone(parse_cfg((BACKBONES / "course_residual.cfg").read_text())).eval()
    outputs, x = [], torch.randn(2, 3, 128, 128)
    for module in net.module_list:
        x = module(x, outputs[module.source]) if isinstance(module, Shortcut) else module(x)
        outputs.append(x)
    shortcuts = [i for i, m in enumerate(net.module_list) if isinstance(m, Shortcut)]
    assert len(shortcuts) == 3
    for i in shortcuts:  # branch end: zero γ, zero β, so the add returns the block input
        assert torch.equal(net.module_list[i - 1].bn.weight, torch.zeros_like(net.module_list[i - 1].bn.weight))
        torch.testing.assert_close(outputs[i], outputs[net.module_list[i].source])
    others = [m.bn.weight for i, m in enumerate(net.module_list) if i + 1 not in shortcuts and hasattr(m, "bn")]
    assert all(torch.equal(w, torch.ones_like(w)) for w in others)


def test_l2norm_by_hand():
    norm = L2Norm(2)
    x = torch.tensor([3.0, 4.0]).view(1, 2, 1, 1)
    torch.testing.assert_close(norm(x).flatten(), torch.tensor([12.0, 16.0]))


def test_backbone_rejects_bad_layers():
    layers = parse_cfg("[convolutional]\nfilters=4\nsize=1\nfeature=linear\nfeature_idx=0\n")
    layers.append({"type": "depthwise", "filters": 8, "size": 3, "stride": 1, "pad": 1, "dilation": 1, "bias": 0,
                   "batch_normalize": 0, "activation": "linear", "quantization": 0, "backbone": 0,
                   "feature": "", "feature_idx": -1})
    with pytest.raises(Exception, match=r"pruned\.cfg \(layer 1\)"):
        CfgBackbone(layers, source="pruned.cfg")


# ---- torchvision ImageNet mapping ----

def randomise_bn(model: nn.Module) -> None:
    """Give every BN non-trivial statistics and affine parameters, so a wrong mapping shows."""
    generator = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.rand(c, generator=generator) - 0.5)
            m.running_var.copy_(torch.rand(c, generator=generator) + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=generator) + 0.5)
            m.bias.data.copy_(torch.rand(c, generator=generator) - 0.3)


@pytest.fixture(scope="module")
def vgg_pair():
    torch.manual_seed(0)
    with torch.device("meta"):  # the 102M-parameter classifier is never used: skip its slow init
        reference = torchvision.models.vgg16_bn().eval()
    reference.features.to_empty(device="cpu")
    for m in reference.features.modules():
        if isinstance(m, (nn.Conv2d, nn.BatchNorm2d)):
            m.reset_parameters()
    randomise_bn(reference)
    backbone = build("vgg_bn_ssd300.cfg")
    keys = map_state_dict(backbone, reference.state_dict(), "vgg16_bn")
    return reference, backbone, keys


def test_vgg16_bn_mapping_gives_the_same_features(vgg_pair):
    reference, backbone, keys = vgg_pair
    assert len(keys) == 13 * 6 and not any(k.startswith("classifier") for k in keys)
    x = torch.randn(1, 3, 96, 96)  # even sizes everywhere, so pool3's ceil_mode changes nothing
    with torch.no_grad():
        conv4_3 = reference.features[:33](x)
        conv5_3 = reference.features[:43](x)
        ours4_3 = run_until(backbone, x, 12)
        ours5_3 = run_until(backbone, x, 16)
        level0 = backbone.l2norms["12"](ours4_3)
    assert conv4_3.abs().max() > 0.1
    torch.testing.assert_close(ours4_3, conv4_3, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours5_3, conv5_3, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(level0, conv4_3 / conv4_3.norm(dim=1, keepdim=True) * 20, atol=1e-5, rtol=1e-5)


def test_vgg16_bn_shape_mismatch_names_key_layer_and_shapes(vgg_pair):
    reference, backbone, _ = vgg_pair
    state = dict(reference.state_dict())
    state["features.3.weight"] = state["features.3.weight"][:32]
    with pytest.raises(CheckpointError) as err:
        map_state_dict(backbone, state, "vgg16_bn")
    message = str(err.value)
    for part in ("features.3.weight", "cfg layer 1", "(32, 64, 3, 3)", "(64, 64, 3, 3)"):
        assert part in message


def test_mobilenet_v2_mapping_gives_the_same_features():
    torch.manual_seed(0)
    reference = torchvision.models.mobilenet_v2().eval()
    randomise_bn(reference)
    backbone = build("mobilenet_v2_ssd.cfg")
    keys = map_state_dict(backbone, reference.state_dict(), "mobilenet_v2")
    assert len(keys) == 52 * 5 and backbone.backbone_end == 61
    x = torch.randn(1, 3, 160, 160)
    with torch.no_grad():
        last96 = reference.features[:14](x)
        conv1280 = reference.features(x)
        level0, level1 = backbone(x)[:2]
    assert last96.shape[1] == 96 and last96.abs().max() > 0.1
    torch.testing.assert_close(level0, last96, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(level1, conv1280, atol=1e-5, rtol=1e-5)


def test_load_imagenet_weights_from_a_file(tmp_path):
    torch.manual_seed(0)
    reference = torchvision.models.mobilenet_v2()
    path = tmp_path / "mobilenet_v2-b0353104.pth"
    torch.save(reference.state_dict(), path)
    backbone = build("mobilenet_v2_ssd.cfg")
    keys = load_imagenet_weights(backbone, "mobilenet_v2", str(path))
    assert "features.18.0.weight" in keys
    assert torch.equal(backbone.module_list[61].conv.weight, reference.features[18][0].weight)
    assert torch.equal(backbone.module_list[61].bn.running_var, reference.features[18][1].running_var)


def test_missing_weights_say_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    backbone = build("course_plain.cfg")
    with pytest.raises(CheckpointError) as err:
        load_imagenet_weights(backbone, "vgg16_bn")
    assert str(tmp_path / "hub" / "checkpoints" / "vgg16_bn-6c64b313.pth") in str(err.value)
    with pytest.raises(CheckpointError, match="elsewhere.pth"):
        load_imagenet_weights(backbone, "mobilenet_v2", str(tmp_path / "elsewhere.pth"))
    with pytest.raises(CheckpointError, match="no ImageNet mapping"):
        load_imagenet_weights(backbone, "resnet18")


def test_mapping_refuses_cfgs_that_do_not_fit():
    torch.manual_seed(0)
    state = torchvision.models.mobilenet_v2().state_dict()
    with pytest.raises(CheckpointError, match="backbone=1"):
        map_state_dict(build("course_plain.cfg"), state, "mobilenet_v2")
    layers = parse_cfg("[convolutional]\nbatch_normalize=1\nfilters=32\nsize=3\nstride=2\npad=1\n"
                       "activation=relu6\nbackbone=1\nfeature=linear\nfeature_idx=0\n")  # bias=1, torchvision has none
    with pytest.raises(CheckpointError, match="bias"):
        map_state_dict(CfgBackbone(layers), state, "mobilenet_v2")


def test_conv_units_pair_convs_with_their_bn():
    units = conv_units(torchvision.models.mobilenet_v2().state_dict())
    assert len(units) == 52
    assert units[0] == ("features.0.0", "features.0.1")
    assert units[2] == ("features.1.conv.1", "features.1.conv.2")
    assert units[-1] == ("features.18.0", "features.18.1")


def test_arch_of_guesses_the_torchvision_net():
    assert arch_of(load_backbone_cfg(BACKBONES / "vgg_bn_ssd512.cfg")[0]) == "vgg16_bn"
    assert arch_of(load_backbone_cfg(BACKBONES / "mobilenet_v2_ssd.cfg")[0]) == "mobilenet_v2"
    assert arch_of(load_backbone_cfg(BACKBONES / "course_residual.cfg")[0]) is None
