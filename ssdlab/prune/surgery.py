"""Carry out a pruning plan on a model: mask, compensate, and build the compact model.

A pruned channel (BN γ = 0) outputs the constant a = act(β) everywhere. Compensation moves
that constant into the layers that read it: for a consumer conv,
`offset[o] = Σ_c (Σ_kh,kw W[o, c]) · a[c]` goes into its BN running mean (−) or its bias (+);
constants pass unchanged through maxpools and add across shortcuts; the heads absorb it in
their biases (SSDLite: through the depthwise conv and BN into the pointwise bias). Then β of
the pruned channels is set to 0, so they output exact zeros and can be cut away: the
compensated full-size model and the compact model compute the same thing.

    masked = masked_model(model, result, "compensated")
    small = compact_model(masked, result)   # or prune_model(model, result)
"""
from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import torch
from torch import Tensor, nn

from ssdlab.errors import PruneError
from ssdlab.model.backbone import Shortcut
from ssdlab.model.build import build_model
from ssdlab.model.cfg import feature_layers, write_cfg
from ssdlab.model.ssd import SSD
from ssdlab.prune.plan import Group, ModelSpec, PrunePlan, budget_plan, plan, prunable_groups, scale_gammas
from ssdlab.quant.layers import QUANTIZER_STATE, IAOConvBN, QuantConv2d

MASKINGS = ("preview", "zeroed", "compensated")
_PRIOR_LISTS = ("FEATURE_MAPS", "STRIDES", "MIN_SIZES", "MAX_SIZES", "ASPECT_RATIOS", "BOXES_PER_LOCATION")


def bn_gammas(model: SSD) -> dict[int, np.ndarray]:
    """|γ| of the BatchNorm of every backbone conv that has one, by cfg layer index."""
    return {i: module.bn.weight.detach().abs().cpu().numpy().astype(np.float64)
            for i, module in enumerate(model.backbone.module_list) if hasattr(module, "bn")}


def plan_gammas(model: SSD, scale: str | None = None) -> dict[int, np.ndarray]:
    """The |γ| a plan ranks: bn_gammas under PRUNE.GAMMA_SCALE (the model's own unless scale is given)."""
    return scale_gammas(bn_gammas(model), model.cfg.PRUNE.GAMMA_SCALE if scale is None else scale)


def make_plan(model: SSD, percent: float, mode: str = "normal", regular: bool = False,
              drop_levels: bool = False, round_to: int | None = None, gamma_scale: str | None = None) -> PrunePlan:
    """The plan for a model's own γ (PRUNE.ROUND_TO and PRUNE.GAMMA_SCALE of the model unless given)."""
    round_to = model.cfg.PRUNE.ROUND_TO if round_to is None else round_to
    return plan(ModelSpec.from_model(model), plan_gammas(model, gamma_scale), percent, mode, regular, drop_levels,
                round_to)


def make_budget_plan(model: SSD, macs_share: float, mode: str = "normal", regular: bool = False,
                     round_to: int | None = None, gamma_scale: str | None = None,
                     drop_levels: bool = False) -> PrunePlan:
    """The plan at the smallest percent that keeps at most `macs_share` of a model's MACs (see budget_plan)."""
    round_to = model.cfg.PRUNE.ROUND_TO if round_to is None else round_to
    return budget_plan(ModelSpec.from_model(model), plan_gammas(model, gamma_scale), macs_share, mode, regular,
                       round_to, drop_levels)


def pruned_groups(model: SSD, result: PrunePlan) -> list[tuple[Group, np.ndarray]]:
    """(group, pruned channel indices) for every group the plan shrinks."""
    out = []
    for g in prunable_groups(model.backbone.defs, result.mode, model.cfg.INPUT.CHANNELS):
        if g.members[0] in result.kept:
            pruned = np.setdiff1d(np.arange(g.width), result.kept[g.members[0]])
            if len(pruned):
                out.append((g, pruned))
    return out


def _activation(module: nn.Module) -> nn.Module:
    """A conv layer's activation module (identity for linear)."""
    return getattr(module, "act", nn.Identity())


def _bn_layers(group: Group, cut: int) -> list[int]:
    """Producers and depthwise convs of a group up to the cut: the layers whose BN is masked."""
    return [i for i in group.producers + group.depthwise if i <= cut]


@torch.no_grad()
def masked_model(model: SSD, result: PrunePlan, how: str = "compensated") -> SSD:
    """A full-size copy with the pruned channels masked.

    `preview`: γ = 0 (the channels become the constant act(β)); `zeroed`: γ = β = 0 without
    compensation (what pruning costs when nothing absorbs the constants); `compensated`: the
    constants moved into the consumers, then γ = β = 0.
    """
    if how not in MASKINGS:
        raise PruneError(f"masking {how!r} is unknown; use one of {', '.join(MASKINGS)}")
    if how == "compensated":
        check_quantized(model)
    masked = copy.deepcopy(model).cpu().eval()
    for group, pruned in pruned_groups(masked, result):
        index = torch.as_tensor(pruned)
        for i in _bn_layers(group, result.cut):
            masked.backbone.module_list[i].bn.weight[index] = 0.0
        if how == "compensated":
            _compensate(masked, group, index, result)
            for i in _bn_layers(group, result.cut):  # pruned filters: zero, as the compact model drops them
                masked.backbone.module_list[i].conv.weight[index] = 0.0
        if how != "preview":
            for i in _bn_layers(group, result.cut):
                masked.backbone.module_list[i].bn.bias[index] = 0.0
    return masked


def _constants(model: SSD, group: Group, index: Tensor, cut: int) -> dict[int, Tensor]:
    """The constant value of the pruned channels at the output of each layer of the group."""
    values: dict[int, Tensor] = {}
    layers = model.backbone.module_list
    for i in (m for m in group.members if m <= cut):
        module = layers[i]
        if isinstance(module, Shortcut):
            values[i] = values[i - 1] + values[module.source]
        elif isinstance(module, nn.MaxPool2d):
            values[i] = values[i - 1]
        else:  # conv or depthwise with γ = 0: BN outputs β
            values[i] = _activation(module)(module.bn.bias[index])
    return values


def _compensate(model: SSD, group: Group, index: Tensor, result: PrunePlan) -> None:
    """Add the pruned channels' constant contribution to every consumer of the group."""
    values = _constants(model, group, index, result.cut)
    defs = model.backbone.defs
    for j in range(1, min(len(defs), result.cut + 1)):
        if j - 1 in values and j not in values:
            if defs[j]["type"] != "convolutional":
                raise PruneError(f"layer {j} ({defs[j]['type']}) reads pruned channels but cannot absorb them")
            _absorb_conv(model.backbone.module_list[j], index, values[j - 1], j)
    for level, layer in enumerate(feature_layers(defs)[:result.levels]):
        if layer in values:
            for head in (model.box_head.cls_headers[level], model.box_head.reg_headers[level]):
                _absorb_head(head, index, values[layer])


def _offset(weight: Tensor, index: Tensor, value: Tensor) -> Tensor:
    """Σ_c (Σ_kh,kw W[o, c]) · value[c] over the pruned input channels c."""
    return weight[:, index].sum(dim=(2, 3)) @ value


def _seen(conv: nn.Module, value: Tensor) -> tuple[Tensor, Tensor]:
    """(weight, input constant) as a conv computes them: quantized for a QuantConv2d, as is otherwise."""
    if isinstance(conv, QuantConv2d):
        return conv.quantized_weight(), conv.act_quant(value)
    return conv.weight, value


def _absorb_conv(module: nn.Module, index: Tensor, value: Tensor, layer: int) -> None:
    """A backbone consumer absorbs the constant in its BN running mean or its bias (quantized domain if QAT)."""
    if isinstance(module, IAOConvBN):  # y = conv(q(x), q(W_fold)) + β − (μ − c)·γ/σ: shift μ
        offset = _offset(module.folded()[0], index, module.act_quant(value))
        bn = module.bn
        ratio = torch.sqrt(bn.running_var + bn.eps) / bn.weight
        bn.running_mean -= torch.where(bn.weight != 0, offset * ratio, torch.zeros_like(offset))
    else:
        weight, seen = _seen(module.conv, value)
        offset = _offset(weight, index, seen)
        if hasattr(module, "bn"):
            module.bn.running_mean -= offset
        elif module.conv.bias is not None:
            module.conv.bias += offset
        else:
            raise PruneError(f"layer {layer} reads pruned channels but has neither BatchNorm nor a bias to absorb "
                             "their constant; set bias=1 in its cfg section and retrain")
    module.conv.weight[:, index] = 0.0  # no longer read; keeps quantizer ranges equal to the compact model's


def _absorb_head(head: nn.Module, index: Tensor, value: Tensor) -> None:
    """A prediction head absorbs the constant (SSD conv bias; SSDLite through depthwise + BN)."""
    if isinstance(head, nn.Conv2d):
        weight, seen = _seen(head, value)
        head.bias += _offset(weight, index, seen)
        head.weight[:, index] = 0.0
        return
    bn = head.bn
    weight, seen = _seen(head.conv, value)
    depthwise = seen * weight[index].sum(dim=(1, 2, 3)) + head.conv.bias[index]
    normed = (depthwise - bn.running_mean[index]) / torch.sqrt(bn.running_var[index] + bn.eps)
    weight, seen = _seen(head.pointwise, head.act(normed * bn.weight[index] + bn.bias[index]))
    head.pointwise.bias += _offset(weight, index, seen)
    bn.weight[index] = 0.0
    bn.bias[index] = 0.0
    head.conv.weight[index] = 0.0
    head.conv.bias[index] = 0.0
    head.pointwise.weight[:, index] = 0.0


def check_quantized(model: SSD) -> None:
    """Refuse pruning a BWN-quantized model (its α and Δ are means over every input weight of a filter)."""
    spec = model.quant_spec
    if spec is not None and spec.kind == "BWN" and spec.wbits < 32:
        raise PruneError("quantize-then-prune is not supported for BWN: binary/ternary weights are scaled by the "
                         "mean |W| over all input channels of a filter, so removing channels changes every kept "
                         "weight and nothing can compensate it; prune the float model, then train BWN "
                         "(prune-then-quantize)")


# --- the compact model ---------------------------------------------------------------------------

def compact_layers(model: SSD, result: PrunePlan) -> list[dict]:
    """The cfg layers of the compact model: kept widths, cut after the last kept head level."""
    layers = []
    for i, layer in enumerate(model.backbone.defs[:result.cut + 1]):
        layer = {k: v for k, v in layer.items() if k != "line"}
        if layer["type"] in ("convolutional", "depthwise"):
            layer["filters"] = result.widths_after[i]
        layers.append(layer)
    return layers


def compact_config(model: SSD, result: PrunePlan, layers: list[dict]):
    """The model's config with the head levels, priors and widths of the compact cfg."""
    cfg = model.cfg.clone()
    levels = result.levels
    cfg.MODEL.BACKBONE.PRETRAINED = False
    for key in _PRIOR_LISTS:
        cfg.MODEL.PRIORS[key] = list(cfg.MODEL.PRIORS[key])[:levels]
    if cfg.MODEL.BOX_HEAD.PREDICTOR == "SSDLiteBoxPredictor":
        separable = cfg.MODEL.BOX_HEAD.LITE_SEPARABLE
        separable = len(model.backbone.feature_layers) - 1 if separable < 0 else separable
        cfg.MODEL.BOX_HEAD.LITE_SEPARABLE = min(separable, levels)
    return cfg.freeze()


@torch.no_grad()
def compact_model(masked: SSD, result: PrunePlan, note: str = "") -> SSD:
    """A smaller SSD holding only the kept channels of a (compensated) masked model."""
    layers = compact_layers(masked, result)
    header = f"# pruned by ssdlab: {note or result.mode} percent={result.percent:g}\n"
    spec = masked.quant_spec  # the same quantization on the layers the cut keeps
    quant = replace(spec, layers=tuple(i for i in spec.layers if i <= result.cut)) if spec else None
    small = build_model(compact_config(masked, result, layers), masked.class_names, header + write_cfg(layers),
                        quant, imagenet=False)
    in_channels = masked.cfg.INPUT.CHANNELS
    for i in range(result.cut + 1):
        src, dst = masked.backbone.module_list[i], small.backbone.module_list[i]
        if hasattr(src, "conv"):
            depthwise = masked.backbone.defs[i]["type"] == "depthwise"
            _copy_conv(src, dst, _t(result.kept_out(i)), None if depthwise else _t(result.kept_in(i, in_channels)))
        if str(i) in masked.backbone.l2norms:
            small.backbone.l2norms[str(i)].weight.copy_(masked.backbone.l2norms[str(i)].weight[_t(result.kept_out(i))])
    for level, layer in enumerate(feature_layers(layers)):
        kept = _t(result.kept_out(layer))
        for name in ("cls_headers", "reg_headers"):
            _copy_head(getattr(masked.box_head, name)[level], getattr(small.box_head, name)[level], kept)
    _copy_quantizer_state(masked, small)
    return small.eval()


def _copy_quantizer_state(src: SSD, dst: SSD) -> None:
    """Copy the activation-range buffers (per tensor, so unaffected by pruning) of every kept layer."""
    own = dict(dst.named_buffers())
    for name, buffer in src.named_buffers():
        if QUANTIZER_STATE.fullmatch(name) and name in own:
            own[name].copy_(buffer)


def _t(index: np.ndarray) -> Tensor:
    """numpy indices -> LongTensor."""
    return torch.as_tensor(np.asarray(index), dtype=torch.long)


def _copy_conv(src: nn.Sequential, dst: nn.Sequential, out_idx: Tensor, in_idx: Tensor | None) -> None:
    """Copy W[kept_out][:, kept_in] (depthwise: W[kept_out]), the bias and the BN slices."""
    weight = src.conv.weight[out_idx]
    dst.conv.weight.copy_(weight if in_idx is None else weight[:, in_idx])
    if src.conv.bias is not None:
        dst.conv.bias.copy_(src.conv.bias[out_idx])
    if hasattr(src, "bn"):
        _copy_bn(src.bn, dst.bn, out_idx)


def _copy_bn(src: nn.BatchNorm2d, dst: nn.BatchNorm2d, index: Tensor) -> None:
    """Copy the kept channels of a BatchNorm (affine and running statistics)."""
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(dst, name).copy_(getattr(src, name)[index])
    dst.num_batches_tracked.copy_(src.num_batches_tracked)


def _copy_head(src: nn.Module, dst: nn.Module, in_idx: Tensor) -> None:
    """Copy a head predictor, keeping only the input channels of the kept feature channels."""
    if isinstance(src, nn.Conv2d):
        dst.weight.copy_(src.weight[:, in_idx])
        dst.bias.copy_(src.bias)
        return
    dst.conv.weight.copy_(src.conv.weight[in_idx])
    dst.conv.bias.copy_(src.conv.bias[in_idx])
    _copy_bn(src.bn, dst.bn, in_idx)
    dst.pointwise.weight.copy_(src.pointwise.weight[:, in_idx])
    dst.pointwise.bias.copy_(src.pointwise.bias)


def prune_model(model: SSD, result: PrunePlan, note: str = "") -> SSD:
    """Compensate and cut: the compact model of a plan."""
    return compact_model(masked_model(model, result, "compensated"), result, note)
