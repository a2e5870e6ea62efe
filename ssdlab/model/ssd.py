"""The SSD detector: a cfg-defined backbone, prediction heads, priors, the loss and post-processing.

    model = build_model(cfg)
    model.train(); losses = model(images, {"labels": labels, "boxes": boxes})  # targets per prior, model.criterion
    model.eval();  detections = model(images)  # one dict per image

`images` are float32 [B, 3, IMAGE_SIZE, IMAGE_SIZE] (RGB, mean subtracted).
Training targets are per prior: `labels` LongTensor[B, N] (0 = background) and
`boxes` Tensor[B, N, 4] encoded with `box_coder.encode` against `model.priors`
(after `matcher.match`), with MODEL.CENTER_VARIANCE and MODEL.SIZE_VARIANCE.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from ssdlab.config import CfgNode
from ssdlab.errors import ConfigError
from ssdlab.model.backbone import CfgBackbone
from ssdlab.model.cfg import parse_cfg, read_backbone_text
from ssdlab.model.heads import SSDHead, SSDLiteHead
from ssdlab.model.loss import Criterion, MultiBoxLoss
from ssdlab.model.postprocess import postprocess
from ssdlab.model.priors import make_priors

if TYPE_CHECKING:
    from ssdlab.quant.layers import QuantSpec

log = logging.getLogger(__name__)

HEADS = {"SSDBoxPredictor": SSDHead, "SSDLiteBoxPredictor": SSDLiteHead}


def make_head(cfg: CfgNode, in_channels: list[int]) -> nn.Module:
    """The head class named by MODEL.BOX_HEAD.PREDICTOR for the given level widths."""
    name = cfg.MODEL.BOX_HEAD.PREDICTOR
    if name not in HEADS:
        raise ConfigError(f"MODEL.BOX_HEAD.PREDICTOR = {name!r} is unknown; use one of {', '.join(HEADS)}")
    args = (in_channels, cfg.MODEL.PRIORS.BOXES_PER_LOCATION, cfg.MODEL.NUM_CLASSES)
    if name == "SSDLiteBoxPredictor":
        return SSDLiteHead(*args, separable=cfg.MODEL.BOX_HEAD.LITE_SEPARABLE)
    return HEADS[name](*args)


def check_levels(backbone: CfgBackbone, cfg: CfgNode, source: str) -> None:
    """The cfg's number of head levels must equal len(MODEL.PRIORS.FEATURE_MAPS)."""
    levels, expected = len(backbone.out_channels), len(cfg.MODEL.PRIORS.FEATURE_MAPS)
    if levels != expected:
        raise ConfigError(f"{source} has {levels} head levels (feature_idx 0..{levels - 1}) but "
                          f"MODEL.PRIORS.FEATURE_MAPS lists {expected}; give MODEL.PRIORS one entry "
                          "per level, or pick the backbone cfg that matches the recipe")


class SSD(nn.Module):
    """Single-shot detector: backbone feature maps -> per-prior class logits and box offsets."""

    priors: Tensor  # [N, 4] cx, cy, w, h relative to the image (a buffer, not saved)
    criterion: Criterion
    quant_spec: QuantSpec | None
    metrics: dict  # a loaded checkpoint's stored metrics

    def __init__(self, cfg: CfgNode, cfg_text: str | None = None, class_names: tuple[str, ...] | None = None,
                 criterion: Criterion | None = None):
        super().__init__()
        source = "<cfg_text>"
        if cfg_text is None:
            cfg_text, source = read_backbone_text(cfg)
        self.cfg = cfg
        self.cfg_text = cfg_text
        self.class_names = tuple(class_names or default_class_names(cfg.MODEL.NUM_CLASSES))
        if len(self.class_names) != cfg.MODEL.NUM_CLASSES:
            raise ConfigError(f"MODEL.NUM_CLASSES = {cfg.MODEL.NUM_CLASSES} but {len(self.class_names)} class "
                              f"names were given ({', '.join(self.class_names)}); they must agree")
        priors = make_priors(cfg.MODEL.PRIORS, cfg.INPUT.IMAGE_SIZE)  # checks the MODEL.PRIORS lists first
        self.backbone = CfgBackbone(parse_cfg(cfg_text, source=source), cfg.INPUT.CHANNELS, source)
        check_levels(self.backbone, cfg, source)
        self.box_head = make_head(cfg, self.backbone.out_channels)
        self.register_buffer("priors", priors, persistent=False)
        self.criterion = criterion or MultiBoxLoss(cfg.MODEL.NEG_POS_RATIO)  # training loss of (logits, boxes, targets)
        self.quant_spec = None  # set when ssdlab.quant.apply.quantize_model swaps in quantized layers

    def forward_raw(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(cls_logits [B, N, C], bbox_pred [B, N, 4]) in prior order."""
        cls_logits, bbox_pred = self.box_head(self.backbone(images))
        if not torch.jit.is_tracing() and cls_logits.shape[1] != len(self.priors):
            raise ConfigError(
                f"the heads predict {cls_logits.shape[1]} boxes for images of size {tuple(images.shape[-2:])} "
                f"but MODEL.PRIORS gives {len(self.priors)} priors; feed images of INPUT.IMAGE_SIZE = "
                f"{self.cfg.INPUT.IMAGE_SIZE} or fix MODEL.PRIORS.FEATURE_MAPS")
        return cls_logits, bbox_pred

    def forward(self, images: Tensor, targets: dict[str, Tensor] | None = None):
        """Training: {"reg_loss", "cls_loss"}; eval: a list of {"boxes", "labels", "scores"} per image."""
        cls_logits, bbox_pred = self.forward_raw(images)
        if self.training:
            if targets is None:
                raise ValueError("SSD in training mode needs targets {'labels', 'boxes'}; "
                                 "call model.eval() to get detections")
            cls_logits, bbox_pred = cls_logits.float(), bbox_pred.float()  # bfloat16 under autocast: loss in float32
            return self.criterion(cls_logits, bbox_pred, targets)
        return postprocess(cls_logits, bbox_pred, self.priors, self.cfg.INPUT.IMAGE_SIZE,
                           self.cfg.MODEL.CENTER_VARIANCE, self.cfg.MODEL.SIZE_VARIANCE,
                           score_threshold=self.cfg.TEST.CONFIDENCE_THRESHOLD,
                           nms_threshold=self.cfg.TEST.NMS_THRESHOLD,
                           max_per_image=self.cfg.TEST.MAX_PER_IMAGE,
                           pre_nms_top_k=self.cfg.TEST.PRE_NMS_TOP_K)


def default_class_names(num_classes: int) -> tuple[str, ...]:
    """'__background__', 'class1', ... for a model built without data."""
    return ("__background__", *(f"class{i}" for i in range(1, num_classes)))


def _meta_features(backbone: CfgBackbone, image_size: int, channels: int, inputs: list) -> list[tuple[int, int]]:
    """(H, W) of each head level on the meta device; inputs collects (layer, input H x W) as layers run."""
    hooks = [m.register_forward_pre_hook(lambda _m, args, i=i: inputs.append((i, tuple(args[0].shape[-2:]))))
             for i, m in enumerate(backbone.module_list)]
    try:
        with torch.device("meta"):
            return [tuple(f.shape[-2:]) for f in backbone(torch.empty(1, channels, image_size, image_size))]
    finally:
        for hook in hooks:
            hook.remove()


def smallest_input(backbone: CfgBackbone, channels: int, low: int, high: int = 4096) -> int | None:
    """The smallest image size in (low, high] the backbone accepts (None when none does)."""
    if not _accepts(backbone, high, channels):
        return None
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if _accepts(backbone, middle, channels) else (middle, high)
    return high


def _accepts(backbone: CfgBackbone, image_size: int, channels: int) -> bool:
    """True when every layer of the backbone can run on an image of this size."""
    try:
        _meta_features(backbone, image_size, channels, [])
        return True
    except RuntimeError:
        return False


def feature_sizes(layers: list[dict], image_size: int, channels: int, source: str = "the backbone cfg"
                  ) -> list[tuple[int, int]]:
    """(H, W) of each head level for one image, from a copy on the meta device (shapes only, no arithmetic);
    ConfigError naming the layer whose input the image size leaves too small."""
    with torch.device("meta"):
        backbone = CfgBackbone(layers, channels).eval()
    inputs: list[tuple[int, tuple]] = []
    try:
        return _meta_features(backbone, image_size, channels, inputs)
    except RuntimeError:
        index, (height, width) = inputs[-1]
        layer = layers[index]
        fits = smallest_input(backbone, channels, image_size)
        advice = f"raise INPUT.IMAGE_SIZE to at least {fits}" if fits else "change the cfg's kernels or strides"
        raise ConfigError(f"INPUT.IMAGE_SIZE = {image_size} is too small for {source}: layer {index} "
                          f"(line {layer.get('line', '?')}, [{layer['type']}] size={layer.get('size', '-')}, "
                          f"pad={layer.get('pad', '-')}) gets a {height}x{width} input, smaller than its kernel; "
                          f"{advice}") from None


def check_feature_maps(model: SSD) -> None:
    """Raise ConfigError unless the backbone's maps at INPUT.IMAGE_SIZE match MODEL.PRIORS.FEATURE_MAPS."""
    size = model.cfg.INPUT.IMAGE_SIZE
    source = Path(model.cfg.MODEL.BACKBONE.CFG).name
    actual = feature_sizes(model.backbone.defs, size, model.cfg.INPUT.CHANNELS, source)
    expected = [(f, f) for f in model.cfg.MODEL.PRIORS.FEATURE_MAPS]
    if actual != expected:
        shown = ", ".join(f"{h}x{w}" for h, w in actual)
        raise ConfigError(f"MODEL.PRIORS.FEATURE_MAPS = {list(model.cfg.MODEL.PRIORS.FEATURE_MAPS)} but the "
                          f"backbone gives maps of {shown} at INPUT.IMAGE_SIZE = {size}; set FEATURE_MAPS to "
                          f"{[h for h, _ in actual]} (and check STRIDES) or change INPUT.IMAGE_SIZE")
