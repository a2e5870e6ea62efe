"""The SSD model end to end: a tiny cfg written here, and every shipped seed backbone cfg."""
from pathlib import Path

import pytest
import torch

from ssdlab.config import PACKAGE_CONFIGS, get_default_config
from ssdlab.errors import ConfigError
from ssdlab.model.box_coder import encode
from ssdlab.model.build import imagenet_arch, build_model
from ssdlab.model.heads import SSDHead, SSDLiteHead
from ssdlab.model.matcher import match
from ssdlab.model.ssd import SSD

TINY_CFG = """
# three stride-2 convs: 32, 16 (level 0), 8 (level 1) at 64 px
[convolutional]
batch_normalize=1
filters=8
size=3
stride=2
pad=1
activation=relu

[convolutional]
batch_normalize=1
filters=16
size=3
stride=2
pad=1
activation=relu
feature=linear
feature_idx=0

[convolutional]
batch_normalize=1
filters=16
size=3
stride=2
pad=1
activation=relu
feature=linear
feature_idx=1
"""


def set_keys(cfg, **keys):
    """Set dotted keys given as MODEL__PRIORS__CLIP=... (double underscore = dot)."""
    for dotted, value in keys.items():
        *path, last = dotted.split("__")
        node = cfg
        for part in path:
            node = node[part]
        node[last] = value
    return cfg


@pytest.fixture
def tiny(tmp_path):
    """A default config pointing at the tiny cfg, 64 px, 4 classes."""
    path = tmp_path / "tiny.cfg"
    path.write_text(TINY_CFG)
    return set_keys(get_default_config(), MODEL__BACKBONE__CFG=str(path), INPUT__IMAGE_SIZE=64,
                    MODEL__NUM_CLASSES=4, MODEL__PRIORS__FEATURE_MAPS=[16, 8], MODEL__PRIORS__STRIDES=[4, 8],
                    MODEL__PRIORS__MIN_SIZES=[10, 25], MODEL__PRIORS__MAX_SIZES=[25, 45],
                    MODEL__PRIORS__ASPECT_RATIOS=[[2], [2, 3]], MODEL__PRIORS__BOXES_PER_LOCATION=[4, 6])


def make_targets(priors, batch, num_classes, seed=0):
    """Per-prior targets for random ground truth (image 1 has no objects)."""
    gen = torch.Generator().manual_seed(seed)
    labels, boxes = [], []
    for b in range(batch):
        n = 0 if b == 1 else 3
        xy = torch.rand(n, 2, generator=gen) * 0.6
        gt = torch.cat([xy, xy + 0.1 + torch.rand(n, 2, generator=gen) * 0.3], dim=1)
        gt_labels = torch.randint(1, num_classes, (n,), generator=gen)
        matched_labels, matched_boxes = match(gt, gt_labels, priors)
        labels.append(matched_labels)
        boxes.append(encode(matched_boxes, priors, 0.1, 0.2))
    return {"labels": torch.stack(labels), "boxes": torch.stack(boxes)}


def train_step_is_finite(model, image_size, batch=3):
    """One forward/backward in train mode gives finite losses and gradients everywhere."""
    model.train()
    images = torch.randn(batch, 3, image_size, image_size)
    losses = model(images, make_targets(model.priors, batch, model.cfg.MODEL.NUM_CLASSES))
    assert set(losses) == {"reg_loss", "cls_loss"}
    assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())
    sum(losses.values()).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.backbone.module_list[0].conv.weight.grad.abs().sum() > 0


def eval_gives_detections(model, image_size, batch=2):
    """Eval mode returns one well-formed detection dict per image."""
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(batch, 3, image_size, image_size))
    assert isinstance(out, list) and len(out) == batch
    for det in out:
        assert set(det) == {"boxes", "labels", "scores"}
        k = len(det["scores"])
        assert det["boxes"].shape == (k, 4) and det["labels"].shape == (k,) and det["labels"].dtype == torch.long
        assert k <= model.cfg.TEST.MAX_PER_IMAGE
        if k:
            assert det["boxes"].min() >= 0 and det["boxes"].max() <= image_size
            assert det["labels"].min() >= 1 and det["labels"].max() < model.cfg.MODEL.NUM_CLASSES
            assert (det["scores"][:-1] >= det["scores"][1:]).all()


def test_tiny_model_structure(tiny):
    model = build_model(tiny)
    assert [name for name, _ in model.named_children()][:2] == ["backbone", "box_head"]
    assert isinstance(model.box_head, SSDHead)
    assert model.cfg_text == TINY_CFG
    assert model.priors.shape == (16 * 16 * 4 + 8 * 8 * 6, 4)
    assert "priors" not in model.state_dict()  # rebuilt from the config, never saved
    cls_logits, bbox_pred = model.forward_raw(torch.randn(2, 3, 64, 64))
    assert cls_logits.shape == (2, 1408, 4) and bbox_pred.shape == (2, 1408, 4)


def test_tiny_model_trains_and_detects(tiny):
    torch.manual_seed(0)
    model = build_model(tiny)
    train_step_is_finite(model, 64)
    eval_gives_detections(model, 64)


def test_ssdlite_predictor(tiny):
    tiny.MODEL.BOX_HEAD.PREDICTOR = "SSDLiteBoxPredictor"
    model = build_model(tiny)
    assert isinstance(model.box_head, SSDLiteHead)
    train_step_is_finite(model, 64)


def test_cfg_text_overrides_the_file(tiny):
    text = TINY_CFG.replace("filters=16\nsize=3\nstride=2\npad=1\nactivation=relu\nfeature=linear\nfeature_idx=1",
                            "filters=24\nsize=3\nstride=2\npad=1\nactivation=relu\nfeature=linear\nfeature_idx=1")
    model = SSD(tiny, cfg_text=text)
    assert model.backbone.out_channels == [16, 24] and model.cfg_text == text


def test_bad_predictor(tiny):
    tiny.MODEL.BOX_HEAD.PREDICTOR = "YOLOPredictor"
    with pytest.raises(ConfigError, match=r"MODEL\.BOX_HEAD\.PREDICTOR.*SSDBoxPredictor"):
        build_model(tiny)


def test_feature_map_mismatch_names_actual_sizes(tiny):
    tiny.MODEL.PRIORS.FEATURE_MAPS = [19, 10]
    with pytest.raises(ConfigError, match=r"MODEL\.PRIORS\.FEATURE_MAPS.*16x16, 8x8"):
        build_model(tiny)


def test_level_count_mismatch(tiny):
    set_keys(tiny, MODEL__PRIORS__FEATURE_MAPS=[16], MODEL__PRIORS__STRIDES=[4], MODEL__PRIORS__MIN_SIZES=[10],
             MODEL__PRIORS__MAX_SIZES=[25], MODEL__PRIORS__ASPECT_RATIOS=[[2]], MODEL__PRIORS__BOXES_PER_LOCATION=[4])
    with pytest.raises(ConfigError, match=r"2 head levels.*FEATURE_MAPS lists 1"):
        build_model(tiny)


def test_wrong_image_size_and_missing_targets(tiny):
    model = build_model(tiny)
    with pytest.raises(ConfigError, match=r"INPUT\.IMAGE_SIZE = 64"):
        model.forward_raw(torch.randn(1, 3, 96, 96))
    with pytest.raises(ValueError, match="needs targets"):
        model.train()(torch.randn(1, 3, 64, 64))


def test_imagenet_arch_from_file_name(tiny):
    assert imagenet_arch("/x/vgg_bn_ssd300_quan.cfg") == "vgg16_bn"
    assert imagenet_arch("mobilenet_v2_ssd.cfg") == "mobilenet_v2"
    tiny.MODEL.BACKBONE.PRETRAINED = True
    with pytest.raises(ConfigError, match=r"MODEL\.BACKBONE\.PRETRAINED"):
        build_model(tiny)


# seed backbones: (image size, MODEL.PRIORS, predictor, expected priors, run one forward)
VGG300 = {}  # the defaults are the VGG SSD300 VOC table
VGG512 = dict(FEATURE_MAPS=[64, 32, 16, 8, 4, 2, 1], STRIDES=[8, 16, 32, 64, 128, 256, 512],
              MIN_SIZES=[35.84, 76.8, 153.6, 230.4, 307.2, 384.0, 460.8],
              MAX_SIZES=[76.8, 153.6, 230.4, 307.2, 384.0, 460.8, 537.65],
              ASPECT_RATIOS=[[2], [2, 3], [2, 3], [2, 3], [2, 3], [2], [2]], BOXES_PER_LOCATION=[4, 6, 6, 6, 6, 4, 4])
LITE320 = dict(FEATURE_MAPS=[20, 10, 5, 3, 2, 1], STRIDES=[16, 32, 64, 107, 160, 320],
               MIN_SIZES=[60, 105, 150, 195, 240, 285], MAX_SIZES=[105, 150, 195, 240, 285, 330],
               ASPECT_RATIOS=[[2, 3]] * 6, BOXES_PER_LOCATION=[6] * 6)
MINI304 = dict(FEATURE_MAPS=[38], STRIDES=[8], MIN_SIZES=[30], MAX_SIZES=[60], ASPECT_RATIOS=[[2]],
               BOXES_PER_LOCATION=[4])
SEED_BACKBONES = [
    ("vgg_bn_ssd300.cfg", 300, VGG300, "SSDBoxPredictor", 8732, False),
    ("vgg_bn_ssd300_fpga.cfg", 300, VGG300, "SSDBoxPredictor", 8732, False),
    ("vgg_bn_ssd300_quan.cfg", 300, VGG300, "SSDBoxPredictor", 8732, False),
    ("vgg_bn_ssd300_fpga_quan.cfg", 300, VGG300, "SSDBoxPredictor", 8732, False),
    ("vgg_bn_ssd512.cfg", 512, VGG512, "SSDBoxPredictor", 24564, False),
    ("mobilenet_v2_ssd.cfg", 320, LITE320, "SSDLiteBoxPredictor", 3234, True),
    ("mini_ssd_fpga.cfg", 304, MINI304, "SSDBoxPredictor", 5776, True),
]


@pytest.mark.parametrize("name, size, priors, predictor, count, run", SEED_BACKBONES,
                         ids=[row[0] for row in SEED_BACKBONES])
def test_seed_backbones_build(name, size, priors, predictor, count, run):
    path = PACKAGE_CONFIGS / "backbones" / name
    if not Path(path).is_file():
        pytest.skip(f"{path} is not shipped yet")
    cfg = set_keys(get_default_config(), MODEL__BACKBONE__CFG=str(path), INPUT__IMAGE_SIZE=size,
                   MODEL__BOX_HEAD__PREDICTOR=predictor)
    for key, value in priors.items():
        cfg.MODEL.PRIORS[key] = value
    torch.manual_seed(0)
    model = build_model(cfg)
    assert len(model.priors) == count
    if run:  # the big VGGs only build: their feature maps are checked by build_model on the meta device
        with torch.no_grad():
            cls_logits, bbox_pred = model.eval().forward_raw(torch.randn(1, 3, size, size))
        assert cls_logits.shape == (1, count, 21) and bbox_pred.shape == (1, count, 4)
        assert torch.isfinite(cls_logits).all() and torch.isfinite(bbox_pred).all()
