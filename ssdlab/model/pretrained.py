"""ImageNet weights from torchvision's vgg16_bn / mobilenet_v2 mapped into a CfgBackbone, with a shape check.

The mapping pairs the convolutions of torchvision's `features` (each with the
BatchNorm that follows it) with our conv/depthwise layers in cfg order, from
layer 0 up to the layer marked `backbone=1`; every tensor's shape is checked.

Where it stops:
- vgg16_bn: the 13 convs conv1_1..conv5_3 (cfg layers 0..16, conv5_3 has backbone=1).
  The classifier (fc6/fc7 as 4096-wide Linear layers on 7x7 maps) is not mapped:
  SSD's fc6/fc7 are new 1024-channel convs trained from scratch.
- mobilenet_v2: all 52 convs of `features` (cfg layers 0..61; the 1280-channel
  conv has backbone=1). The classifier is not mapped.

Weights are never downloaded: the file comes from MODEL.BACKBONE.WEIGHTS or
torch's hub cache, where torchvision itself keeps them.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import cast

import torch

from ssdlab.errors import CheckpointError
from ssdlab.files import load_tensors
from ssdlab.model.backbone import CfgBackbone

log = logging.getLogger(__name__)

TORCHVISION_FILES = {
    "vgg16_bn": "vgg16_bn-6c64b313.pth",
    "mobilenet_v2": "mobilenet_v2-b0353104.pth",
}
_BN_KEYS = ("weight", "bias", "running_mean", "running_var")


def default_weights_path(arch: str) -> Path:
    """Where torchvision caches the ImageNet file of arch: <torch hub dir>/checkpoints/<file>."""
    return Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION_FILES[arch]


def _check_arch(arch: str) -> None:
    """Refuse an architecture we have no mapping for."""
    if arch not in TORCHVISION_FILES:
        raise CheckpointError(f"no ImageNet mapping for arch {arch!r}; use one of {', '.join(TORCHVISION_FILES)}")


def conv_units(state_dict: dict[str, torch.Tensor], prefix: str = "features.") -> list[tuple[str, str | None]]:
    """(conv prefix, following BN prefix or None) for every 4-D conv weight under prefix, in order."""
    units: list[tuple[str, str | None]] = []
    for key, value in state_dict.items():
        if not key.startswith(prefix):
            continue
        module = key.rsplit(".", 1)[0]
        if key.endswith(".weight") and value.dim() == 4:
            units.append((module, None))
        elif key.endswith(".running_mean") and units and units[-1][1] is None:
            units[-1] = (units[-1][0], module)
    return units


def arch_of(layers: list[dict]) -> str | None:
    """Guess which torchvision net a cfg's layers up to backbone=1 come from (None when neither fits)."""
    end = next((i for i, layer in enumerate(layers) if layer.get("backbone", 0)), -1)
    convs = [layer for layer in layers[:end + 1] if layer["type"] in ("convolutional", "depthwise")]
    depthwise = any(layer["type"] == "depthwise" for layer in convs)
    if len(convs) == 13 and not depthwise:
        return "vgg16_bn"
    if len(convs) == 52 and depthwise:
        return "mobilenet_v2"
    return None


def _copy(target: torch.Tensor, source: torch.Tensor, key: str, index: int, name: str) -> None:
    """Copy source into target after checking the shapes match."""
    if target.shape != source.shape:
        raise CheckpointError(f"torchvision key {key} has shape {tuple(source.shape)} but cfg layer {index} "
                              f"({name}) has {tuple(target.shape)}; the cfg does not match the ImageNet net "
                              "up to backbone=1 (was it pruned? then load the pruned checkpoint instead)")
    target.copy_(source)


def _require(state_dict: dict, key: str, index: int, what: str) -> torch.Tensor:
    """state_dict[key], or a CheckpointError naming the layer that needs it."""
    if key not in state_dict:
        raise CheckpointError(f"cfg layer {index} has {what} but the torchvision state dict has no {key}; "
                              "the cfg's bias/batch_normalize settings differ from the ImageNet net")
    return state_dict[key]


def _map_unit(sequential: torch.nn.Module, unit: tuple[str, str | None], tv: dict, index: int) -> list[str]:
    """Copy one torchvision conv (+BN) into one cfg conv layer; returns the keys used."""
    conv_prefix, bn_prefix = unit
    conv = cast(torch.nn.Conv2d, sequential.conv)
    used = [f"{conv_prefix}.weight"]
    _copy(conv.weight, tv[used[0]], used[0], index, "conv.weight")
    tv_bias = f"{conv_prefix}.bias"
    if (conv.bias is not None) != (tv_bias in tv):
        ours = "has a conv bias" if conv.bias is not None else "has no conv bias"
        raise CheckpointError(f"cfg layer {index} {ours} but torchvision's {conv_prefix} does not agree; "
                              "set bias=1 for vgg16_bn and bias=0 for mobilenet_v2")
    if conv.bias is not None:
        _copy(conv.bias, tv[tv_bias], tv_bias, index, "conv.bias")
        used.append(tv_bias)
    bn = getattr(sequential, "bn", None)
    if (bn is None) != (bn_prefix is None):
        raise CheckpointError(f"cfg layer {index} batch_normalize does not match torchvision's {conv_prefix} "
                              f"(BN there: {bn_prefix is not None}); both nets use BN after every conv")
    if bn is not None:
        for name in _BN_KEYS:
            key = f"{bn_prefix}.{name}"
            _copy(getattr(bn, name), _require(tv, key, index, "BN"), key, index, f"bn.{name}")
            used.append(key)
    return used


@torch.no_grad()
def map_state_dict(backbone: CfgBackbone, tv_state_dict: dict[str, torch.Tensor], arch: str) -> list[str]:
    """Copy a torchvision ImageNet state dict into backbone layers 0..backbone_end; returns the keys mapped."""
    _check_arch(arch)
    if backbone.backbone_end < 0:
        raise CheckpointError("the backbone cfg marks no layer with backbone=1, so there is nothing to load "
                              "ImageNet weights into; set MODEL.BACKBONE.PRETRAINED False")
    ours = [i for i in range(backbone.backbone_end + 1)
            if backbone.defs[i]["type"] in ("convolutional", "depthwise")]
    units = conv_units(tv_state_dict)
    if len(ours) > len(units):
        raise CheckpointError(f"the cfg has {len(ours)} conv layers up to backbone=1 (layer "
                              f"{backbone.backbone_end}) but torchvision {arch} has only {len(units)}; "
                              "move backbone=1 to the last layer that matches the ImageNet net")
    used: list[str] = []
    for index, unit in zip(ours, units):
        used += _map_unit(backbone.module_list[index], unit, tv_state_dict, index)
    log.info("mapped %d torchvision %s tensors into cfg layers 0..%d", len(used), arch, backbone.backbone_end)
    return used


def load_imagenet_weights(backbone: CfgBackbone, arch: str, weights: str = "") -> list[str]:
    """Load torchvision's ImageNet file (weights, else the hub cache; never downloaded) into the backbone."""
    _check_arch(arch)
    path = Path(weights).expanduser() if weights else default_weights_path(arch)
    if not path.is_file():
        url = f"https://download.pytorch.org/models/{TORCHVISION_FILES[arch]}"
        raise CheckpointError(f"ImageNet weights for {arch} not found at {path}; ssdlab never downloads: fetch "
                              f"{url} and put it at {default_weights_path(arch)} (or set MODEL.BACKBONE.WEIGHTS), "
                              "or set MODEL.BACKBONE.PRETRAINED False")
    state_dict = load_tensors(path, CheckpointError, f"torchvision {arch} state dict (MODEL.BACKBONE.WEIGHTS)")
    if not isinstance(state_dict, dict):
        raise CheckpointError(f"{path} holds a {type(state_dict).__name__}, not a torchvision state dict; "
                              f"give the file {TORCHVISION_FILES[arch]} as MODEL.BACKBONE.WEIGHTS")
    return map_state_dict(backbone, state_dict, arch)
