"""Building an SSD: from a config (a new model) or from a checkpoint's parts, quantized as its QuantSpec says.

    model = build_model(cfg)                             # MODEL.BACKBONE.CFG, QUANTIZATION.*, ImageNet weights
    model = stored_model(cfg, cfg_text, names, checkpoint["quant"])          # a checkpoint's model, before its weights
"""
from __future__ import annotations

import logging
from pathlib import Path

from ssdlab.config import CfgNode
from ssdlab.errors import ConfigError
from ssdlab.model.pretrained import load_imagenet_weights
from ssdlab.model.ssd import SSD, check_feature_maps
from ssdlab.quant.apply import quant_spec, quantization_flags, quantize_model
from ssdlab.quant.layers import QuantSpec

log = logging.getLogger(__name__)


def imagenet_arch(cfg_path: str) -> str:
    """The torchvision ImageNet net for a backbone cfg, guessed from its file name."""
    name = Path(cfg_path).name.lower()
    if "mobilenet_v2" in name:
        return "mobilenet_v2"
    if "vgg" in name:
        return "vgg16_bn"
    raise ConfigError(f"MODEL.BACKBONE.PRETRAINED is true but {cfg_path} names neither 'vgg' nor "
                      "'mobilenet_v2', so no ImageNet weights fit it; set MODEL.BACKBONE.PRETRAINED False")


def build_model(cfg: CfgNode, class_names: tuple[str, ...] | None = None, cfg_text: str | None = None,
                quant: QuantSpec | None = None, imagenet: bool = True) -> SSD:
    """An SSD for cfg (backbone from cfg_text, else MODEL.BACKBONE.CFG), its feature-map sizes checked against
    MODEL.PRIORS; ImageNet weights when MODEL.BACKBONE.PRETRAINED and imagenet. Quantized as `quant` says; without
    it as cfg's QUANTIZATION.* says, on the layers the backbone cfg marks quantization=1."""
    model = SSD(cfg, cfg_text=cfg_text, class_names=class_names)
    check_feature_maps(model)
    if imagenet and cfg.MODEL.BACKBONE.PRETRAINED:
        load_imagenet_weights(model.backbone, imagenet_arch(cfg.MODEL.BACKBONE.CFG), cfg.MODEL.BACKBONE.WEIGHTS)
    quantize_model(model, quant or quant_spec(cfg, model.backbone.defs))
    log.info("built SSD: %s, %s, %d priors, %d classes", Path(cfg.MODEL.BACKBONE.CFG).name,
             type(model.box_head).__name__, len(model.priors), cfg.MODEL.NUM_CLASSES)
    return model


def stored_model(cfg: CfgNode, cfg_text: str, class_names, quant: dict | None) -> SSD:
    """The model a checkpoint describes, before its weights: quantized as its stored QuantSpec says (a checkpoint
    written before the spec was stored: as its config says, on the layers its own cfg_text marks)."""
    spec = QuantSpec.from_dict(quant) if quant else None  # None: build_model reads the config and cfg_text's marks
    return build_model(cfg, class_names, cfg_text, spec, imagenet=False)


def fine_tune_model(cfg: CfgNode, cfg_text: str, class_names) -> SSD:
    """The model a fine-tune under cfg starts from, before the start's weights: the start's layers and widths
    (pruned ones too) with the recipe's quantization=1 marks, layer by layer, quantized as cfg says; refused when
    the start is another network than MODEL.BACKBONE.CFG (quantization_flags checks it)."""
    return build_model(cfg, class_names, quantization_flags(cfg_text, cfg), imagenet=False)
