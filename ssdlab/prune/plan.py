"""The pruning plan: which channels to keep, computed from BN γ and the cfg alone (no model needed).

Channels are grouped by the tensors they flow through. A conv starts a new channel space;
a maxpool and a depthwise conv keep their input's space; a shortcut joins the spaces of the
two tensors it adds. Every space is one *group*, pruned with one mask:

- `normal` groups have a single conv producing them (the original SSD code's prunable layers);
- `shortcut` groups join several convs through residual adds: the mask is the union (OR)
  of the producers' masks, so added tensors keep the same channels;
- `coupled` groups pass through a depthwise conv (an expand conv and its depthwise conv):
  the depthwise channels follow the expand conv's mask.

The threshold is global over the prunable |γ|; with PRUNE.GAMMA_SCALE `layer` each |γ| is first divided by
the largest of its layer (scale_gammas), so a layer whose γ all shrank together during sparse training is
ranked by their relative sizes instead of being emptied.

Mode `normal` prunes normal groups, `shortcut` adds shortcut groups, and `coupled` adds
depthwise-coupled groups as well (with shortcut groups). A group is never pruned when one of
its layers has no BatchNorm or carries the L2Norm feature, or when it is the input image.

    spec = ModelSpec.from_model(model)
    result = plan(spec, gammas, percent=0.5, mode="normal")
    result.kept[layer]           # kept output-channel indices of every pruned layer
    result.params_after / result.params_before
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ssdlab.config import check_choice
from ssdlab.errors import PruneError
from ssdlab.model.cfg import feature_layers, infer_channels

MODES = ("normal", "shortcut", "coupled")
_MODE_KINDS = {"normal": {"normal"}, "shortcut": {"normal", "shortcut"},
               "coupled": {"normal", "shortcut", "coupled"}}


@dataclass(frozen=True)
class ModelSpec:
    """What the plan needs to know about a detector: cfg layers, head layout and input size."""

    layers: list[dict]
    image_size: int
    predictor: str = "SSDBoxPredictor"
    boxes_per_location: tuple[int, ...] = ()
    num_classes: int = 21
    in_channels: int = 3
    lite_separable: int = -1  # SSDLite: levels with separable predictors (-1: all but the last)

    @classmethod
    def from_config(cls, cfg, layers: list[dict]) -> "ModelSpec":
        """The spec of a model built from a config and parsed cfg layers."""
        return cls(layers=layers, image_size=cfg.INPUT.IMAGE_SIZE, predictor=cfg.MODEL.BOX_HEAD.PREDICTOR,
                   boxes_per_location=tuple(cfg.MODEL.PRIORS.BOXES_PER_LOCATION),
                   num_classes=cfg.MODEL.NUM_CLASSES, in_channels=cfg.INPUT.CHANNELS,
                   lite_separable=cfg.MODEL.BOX_HEAD.LITE_SEPARABLE)

    @classmethod
    def from_model(cls, model) -> "ModelSpec":
        """The spec of an ssdlab SSD."""
        return cls.from_config(model.cfg, model.backbone.defs)


@dataclass
class Group:
    """One channel space: the layers whose outputs carry it, and how it may be pruned."""

    members: list[int]  # every layer whose output is this space, in order
    producers: list[int]  # convs that create the channels (their BN γ decide the mask)
    depthwise: list[int]  # depthwise convs that follow the mask
    kind: str  # normal | shortcut | coupled
    width: int
    blocked: str = ""  # why the group can never be pruned ("" when it can)


def _find(parent: list[int], i: int) -> int:
    """Union-find root of i (with path halving)."""
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


def channel_groups(layers: list[dict], in_channels: int = 3) -> list[Group]:
    """Every channel space of a cfg, in order of its first layer."""
    widths = infer_channels(layers, in_channels)
    parent = list(range(len(layers) + 1))  # index len(layers) stands for the input image
    image = len(layers)

    def union(a: int, b: int) -> None:
        parent[_find(parent, a)] = _find(parent, b)

    for i, layer in enumerate(layers):
        previous = i - 1 if i > 0 else image
        if layer["type"] in ("depthwise", "maxpool"):
            union(i, previous)
        elif layer["type"] == "shortcut":
            union(i, previous)
            union(i, i + layer["from"])
    spaces: dict[int, list[int]] = {}
    for i in range(len(layers)):
        spaces.setdefault(_find(parent, i), []).append(i)
    return [_make_group(layers, members, widths[members[0]], _find(parent, image) == root)
            for root, members in spaces.items()]


def _make_group(layers: list[dict], members: list[int], width: int, is_image: bool) -> Group:
    """Classify one channel space."""
    producers = [i for i in members if layers[i]["type"] == "convolutional"]
    depthwise = [i for i in members if layers[i]["type"] == "depthwise"]
    has_shortcut = any(layers[i]["type"] == "shortcut" for i in members)
    kind = "coupled" if depthwise else "shortcut" if has_shortcut or len(producers) > 1 else "normal"
    blocked = ""
    if is_image:
        blocked = "carries the input image"
    elif any(not layers[i]["batch_normalize"] for i in producers + depthwise):
        blocked = "has a conv without BatchNorm"
    elif any(layers[i].get("feature") == "l2_norm" for i in members):
        blocked = "feeds the L2Norm head level"
    return Group(members, producers, depthwise, kind, width, blocked)


def prunable_groups(layers: list[dict], mode: str, in_channels: int = 3) -> list[Group]:
    """The groups pruned in a mode (normal | shortcut | coupled)."""
    check_mode(mode)
    return [g for g in channel_groups(layers, in_channels) if not g.blocked and g.kind in _MODE_KINDS[mode]]


def prunable_layers(layers: list[dict], mode: str, in_channels: int = 3) -> list[int]:
    """The conv layers whose BN γ the plan reads (and sparse training pushes down)."""
    return sorted(i for g in prunable_groups(layers, mode, in_channels) for i in g.producers)


@dataclass
class PrunePlan:
    """The outcome of `plan`: kept channels per layer, the threshold, and the cost before/after."""

    mode: str
    percent: float
    threshold: float
    highest_safe: float  # the largest percent that empties no group
    kept: dict[int, np.ndarray]  # layer -> kept output channels, for every layer of a pruned group
    widths_before: list[int]
    widths_after: list[int]  # per layer of the compact cfg (after any cut)
    levels: int  # head levels kept
    cut: int  # last cfg layer kept (len(layers) - 1 without a cut)
    emptied: list[int] = field(default_factory=list)  # first layer of each group left with no channel
    producers: set[int] = field(default_factory=set)  # the conv layers whose γ were ranked
    params_before: int = 0
    params_after: int = 0
    macs_before: int = 0
    macs_after: int = 0

    @property
    def safe(self) -> bool:
        """True when no group lost all its channels to the threshold."""
        return not self.emptied

    @property
    def channels_before(self) -> int:
        """Channels of the pruned groups' producers before pruning."""
        return sum(self.widths_before[i] for i in self.kept if i in self.producers)

    @property
    def channels_after(self) -> int:
        """Channels of the pruned groups' producers kept."""
        return sum(len(self.kept[i]) for i in self.kept if i in self.producers)

    def kept_out(self, layer: int) -> np.ndarray:
        """Kept output channels of any layer (all of them for unpruned layers)."""
        return self.kept.get(layer, np.arange(self.widths_before[layer]))

    def kept_in(self, layer: int, in_channels: int = 3) -> np.ndarray:
        """Kept input channels of a layer (its predecessor's kept outputs)."""
        return self.kept_out(layer - 1) if layer > 0 else np.arange(in_channels)

    def compression(self) -> float:
        """1 - params after / params before."""
        return 1.0 - self.params_after / self.params_before if self.params_before else 0.0


def scale_gammas(gammas: dict[int, np.ndarray], scale: str = "global") -> dict[int, np.ndarray]:
    """The |γ| the global threshold ranks: as they are (`global`), or each over the largest |γ| of its layer
    (`layer`: a layer whose γ all shrank together keeps its relative order, so it is neither emptied nor spared)."""
    check_choice("PRUNE.GAMMA_SCALE", scale, "config")
    if scale == "global":
        return gammas
    return {i: np.abs(g) / max(float(np.max(np.abs(g))), 1e-12) for i, g in gammas.items()}


def threshold_index(n: int, percent: float) -> int:
    """Index into the sorted |γ| of the threshold for a prune ratio: int(n * percent)."""
    return min(int(math.floor(n * percent + 1e-9)), n - 1)


def _group_max(group: Group, gammas: dict[int, np.ndarray]) -> float:
    """Largest |γ| among a group's producers."""
    return max(float(np.max(np.abs(gammas[i]))) for i in group.producers)


def _check_gammas(groups: list[Group], gammas: dict[int, np.ndarray], widths: list[int]) -> None:
    """Every producer needs a γ vector of its width."""
    for g in groups:
        for i in g.producers:
            if i not in gammas:
                raise PruneError(f"no BN γ given for prunable layer {i}")
            if len(gammas[i]) != widths[i]:
                raise PruneError(f"layer {i} has {widths[i]} channels but {len(gammas[i])} γ values were given")


def check_percent(percent: object) -> None:
    """PruneError unless percent is a number in [0, 1) (the share of the prunable channels to remove)."""
    if isinstance(percent, bool) or not isinstance(percent, (int, float, np.floating)):
        raise PruneError(f"{{percent}} {percent!r} is not a number; give the fraction of channels to prune, e.g. 0.5")
    if not 0.0 <= percent < 1.0:
        raise PruneError(f"{{percent}} {percent} is outside [0, 1); give the fraction of channels to prune, e.g. 0.5")


def check_mode(mode: str) -> None:
    """PruneError unless mode is a prune mode."""
    if mode not in _MODE_KINDS:
        raise PruneError(f"prune mode {mode!r} is unknown; use one of {', '.join(MODES)}")


def plan(spec: ModelSpec, gammas: dict[int, np.ndarray], percent: float, mode: str = "normal",
         regular: bool = False, drop_levels: bool = False, round_to: int = 8) -> PrunePlan:
    """Kept channels for a global |γ| threshold at `percent`, plus params and MACs before and after."""
    check_percent(percent)
    if round_to < 1:
        raise PruneError(f"PRUNE.ROUND_TO = {round_to}; it must be a positive number of channels")
    layers = spec.layers
    widths = infer_channels(layers, spec.in_channels)
    groups = prunable_groups(layers, mode, spec.in_channels)
    if not groups:
        raise PruneError(f"the model has no channels prunable in {mode!r} mode (every group is blocked: no "
                         "BatchNorm, L2Norm or shortcut/depthwise couplings); try {mode}shortcut or coupled")
    _check_gammas(groups, gammas, widths)
    pool = np.sort(np.concatenate([np.abs(gammas[i]) for g in groups for i in g.producers]))
    threshold = float(pool[threshold_index(len(pool), percent)]) if percent > 0 else float(pool[0])
    weakest = min(_group_max(g, gammas) for g in groups)
    highest_safe = int(np.searchsorted(pool, weakest, side="left")) / len(pool)
    emptied = sorted(min(g.producers) for g in groups if _group_max(g, gammas) < threshold)
    levels, cut = _levels_and_cut(layers, groups, gammas, threshold, drop_levels)
    kept: dict[int, np.ndarray] = {}
    for g in groups:
        keep = _group_mask(g, gammas, threshold, cut)
        if keep is None:
            continue
        if regular:
            keep = _round_up(g, gammas, keep, round_to, cut)
        for i in g.members:
            if i <= cut:
                kept[i] = np.flatnonzero(keep)
    result = PrunePlan(mode, float(percent), threshold, highest_safe, kept, widths, [], levels, cut, emptied,
                       producers={i for g in groups for i in g.producers})
    return _with_costs(result, spec)


def budget_plan(spec: ModelSpec, gammas: dict[int, np.ndarray], macs_share: float, mode: str = "normal",
                regular: bool = False, round_to: int = 8, drop_levels: bool = False) -> PrunePlan:
    """The plan at the smallest percent k/N (N prunable channels) whose MACs are at most `macs_share` of the
    model's, by bisection over k (the plan at the highest allowed percent when none gets there); regular,
    round_to and drop_levels as in `plan` (drop_levels allows percents past the safe ratio that drop levels)."""
    if not 0.0 < macs_share < 1.0:
        raise PruneError(f"a MACs budget of {macs_share:g} is outside (0, 1); give the share of the MACs to keep")
    first = plan(spec, gammas, 0.0, mode)
    n = sum(len(gammas[i]) for i in first.producers)
    low, high = 0, _highest_allowed(spec, gammas, mode, n, min(round(first.highest_safe * n), n - 1), drop_levels)
    best = plan(spec, gammas, high / n, mode, regular, drop_levels, round_to)
    if best.macs_after > macs_share * best.macs_before:
        return best
    while low < high:  # invariant: the plan at k = high is within the budget
        middle = (low + high) // 2
        candidate = plan(spec, gammas, middle / n, mode, regular, drop_levels, round_to)
        if candidate.macs_after <= macs_share * candidate.macs_before:
            high, best = middle, candidate
        else:
            low = middle + 1
    return best


def _highest_allowed(spec: ModelSpec, gammas: dict[int, np.ndarray], mode: str, n: int, safe: int,
                     drop_levels: bool) -> int:
    """The largest k whose plan exists: the safe k, or with drop_levels the last k that keeps a head level
    (bisection: once a percent empties a layer before the first level, every higher one does)."""
    if not drop_levels:
        return safe
    low, high = safe, n - 1
    while low < high:  # invariant: the plan at k = low exists
        middle = (low + high + 1) // 2
        try:
            plan(spec, gammas, middle / n, mode, drop_levels=True)
        except PruneError:
            high = middle - 1
        else:
            low = middle
    return low


def _with_costs(result: PrunePlan, spec: ModelSpec) -> PrunePlan:
    """Fill the kept widths of the (cut) cfg and the params/MACs before and after."""
    result.widths_after = [len(result.kept_out(i)) for i in range(result.cut + 1)]
    result.params_before, result.macs_before = model_cost(spec, result.widths_before, len(feature_layers(spec.layers)))
    result.params_after, result.macs_after = model_cost(spec, result.widths_after, result.levels)
    return result


def plan_for_kept(spec: ModelSpec, mode: str, kept: dict[int, np.ndarray], percent: float = 0.0) -> PrunePlan:
    """A plan from chosen kept channels (layer of a group -> indices), e.g. one group pruned alone."""
    widths = infer_channels(spec.layers, spec.in_channels)
    groups = prunable_groups(spec.layers, mode, spec.in_channels)
    chosen: dict[int, np.ndarray] = {}
    for g in groups:
        given = [kept[i] for i in g.members if i in kept]
        if given:
            indices = np.unique(np.asarray(given[0], dtype=np.int64))
            if len(indices) == 0 or indices[0] < 0 or indices[-1] >= g.width:
                raise PruneError(f"kept channels of layer {g.members[0]} must be 1..{g.width} indices below {g.width}")
            chosen.update({i: indices for i in g.members})
    result = PrunePlan(mode, percent, float("nan"), float("nan"), chosen, widths, [], len(feature_layers(spec.layers)),
                       len(spec.layers) - 1, producers={i for g in groups for i in g.producers})
    return _with_costs(result, spec)


def _group_mask(group: Group, gammas: dict[int, np.ndarray], threshold: float, cut: int) -> np.ndarray | None:
    """Union of the producers' masks (each keeps at least its largest-|γ| channel); None past the cut."""
    producers = [i for i in group.producers if i <= cut]
    if not producers:
        return None
    keep = np.zeros(group.width, dtype=bool)
    for i in producers:
        mask = np.abs(gammas[i]) >= threshold
        if not mask.any():
            mask[int(np.argmax(np.abs(gammas[i])))] = True
        keep |= mask
    return keep


def _round_up(group: Group, gammas: dict[int, np.ndarray], keep: np.ndarray, round_to: int, cut: int) -> np.ndarray:
    """Keep the kept channels plus the next-largest |γ|, the count rounded up to a multiple of round_to (≤ width)."""
    count = min(group.width, math.ceil(int(keep.sum()) / round_to) * round_to)
    score = np.max([np.abs(gammas[i]) for i in group.producers if i <= cut], axis=0)
    order = np.lexsort((np.arange(group.width), -score, ~keep))  # kept first, then largest |γ|, then index
    rounded = np.zeros(group.width, dtype=bool)
    rounded[order[:count]] = True
    return rounded


def _levels_and_cut(layers: list[dict], groups: list[Group], gammas: dict[int, np.ndarray], threshold: float,
                    drop_levels: bool) -> tuple[int, int]:
    """Head levels kept and the last cfg layer kept; `max` cuts at the first emptied group."""
    features = feature_layers(layers)
    if not drop_levels:
        return len(features), len(layers) - 1
    empty = [min(g.producers) for g in groups if _group_max(g, gammas) < threshold]
    if not empty:
        return len(features), len(layers) - 1
    first = min(empty)
    levels = sum(1 for f in features if f < first)
    if levels == 0:
        raise PruneError(f"{{drop_levels}} at this percent empties layer {first}, before the first head level "
                         f"(layer {features[0]}), so no head level would remain; lower {{percent}}")
    return levels, features[levels - 1]


# --- cost of a (pruned) cfg: params and MACs from widths and spatial sizes ---------------------

def spatial_sizes(layers: list[dict], image_size: int) -> list[int]:
    """Output height (= width) of every layer for a square input."""
    sizes, size = [], image_size
    for layer in layers:
        if layer["type"] in ("convolutional", "depthwise"):
            span = layer["dilation"] * (layer["size"] - 1) + 1
            size = (size + 2 * layer["pad"] - span) // layer["stride"] + 1
        elif layer["type"] == "maxpool":
            size = _pool_size(size, layer)
        sizes.append(size)
    return sizes


def _pool_size(size: int, layer: dict) -> int:
    """MaxPool2d output size (torch's rule, ceil_mode included)."""
    k, s, p = layer["size"], layer["stride"], layer["pad"]
    if not layer["ceil_mode"]:
        return (size + 2 * p - k) // s + 1
    out = -(-(size + 2 * p - k) // s) + 1
    return out - 1 if (out - 1) * s >= size + p else out


def _conv_cost(layer: dict, c_in: int, c_out: int, size: int) -> tuple[int, int]:
    """(params, MACs) of one conv/depthwise layer with its BN."""
    per_out = layer["size"] ** 2 * (1 if layer["type"] == "depthwise" else c_in)
    params = c_out * per_out + c_out * layer["bias"] + 2 * c_out * layer["batch_normalize"]
    return params, c_out * per_out * size * size


def _head_cost(spec: ModelSpec, channels: list[int], sizes: list[int]) -> tuple[int, int]:
    """(params, MACs) of the prediction head on the kept levels."""
    params = macs = 0
    separable = spec.lite_separable if spec.lite_separable >= 0 else len(spec.boxes_per_location) - 1
    for level, (c, hw) in enumerate(zip(channels, sizes)):
        b = spec.boxes_per_location[level]
        for out in (b * spec.num_classes, b * 4):
            if spec.predictor == "SSDBoxPredictor":
                params, macs = params + c * out * 9 + out, macs + c * out * 9 * hw * hw
            elif level < separable:  # depthwise 3x3 with bias, BN, 1x1 with bias
                params += c * 9 + c + 2 * c + c * out + out
                macs += (c * 9 + c * out) * hw * hw
            else:
                params, macs = params + c * out + out, macs + c * out * hw * hw
    return params, macs


COSTS = ("params", "macs", "latency")


def channel_cost(spec: ModelSpec, mode: str, kind: str = "params",
                 speed: dict[int | str, float] | None = None) -> dict[int, float]:
    """Parameters (kind 'params'), MACs per image ('macs') or estimated ms ('latency': each conv's MACs times its
    measured ms per MAC in `speed`, see layer_speed) one channel of each prunable group carries (removing it from
    every member of the group and from the inputs of its consumers), keyed by the group's producer layers."""
    if kind == "latency" and speed is None:
        raise ValueError("channel_cost(kind='latency') needs the measured ms per MAC of each layer (speed)")
    widths = infer_channels(spec.layers, spec.in_channels)
    levels = len(feature_layers(spec.layers))

    measured = speed or {}

    def cost(w: list[int]) -> float:
        if kind == "latency":
            return sum(macs * measured.get(key, 0.0) for key, _, macs in layer_costs(spec, w, levels))
        return model_cost(spec, w, levels)[COSTS.index(kind)]

    full, saved = cost(widths), {}
    for group in prunable_groups(spec.layers, mode, spec.in_channels):
        narrower = [w - 1 if i in group.members else w for i, w in enumerate(widths)]
        saved.update(dict.fromkeys(group.producers, full - cost(narrower)))
    return saved


def layer_speed(spec: ModelSpec, ms: dict[int | str, float]) -> dict[int | str, float]:
    """ms per MAC of every conv layer (cfg index) and of the head ('head'), from their measured ms
    (ssdlab.engine.profile.layer_latency) and their MACs at the full widths."""
    widths = infer_channels(spec.layers, spec.in_channels)
    return {key: ms[key] / macs for key, _, macs in layer_costs(spec, widths, len(feature_layers(spec.layers)))
            if macs and key in ms}


def layer_costs(spec: ModelSpec, widths: list[int], levels: int) -> list[tuple[int | str, int, int]]:
    """(cfg index or 'head', params, MACs) of every conv layer of layers 0..len(widths)-1 and of the head on the
    first `levels` levels (an L2Norm's scale counts as its layer's params)."""
    layers = spec.layers[:len(widths)]
    sizes = spatial_sizes(layers, spec.image_size)
    rows = []
    for i, layer in enumerate(layers):
        c_in = widths[i - 1] if i > 0 else spec.in_channels
        params, macs = _conv_cost(layer, c_in, widths[i], sizes[i]) if layer["type"] in (
            "convolutional", "depthwise") else (0, 0)
        params += widths[i] if layer.get("feature") == "l2_norm" else 0
        if params or macs:
            rows.append((i, params, macs))
    features = feature_layers(spec.layers)[:levels]
    return rows + [("head", *_head_cost(spec, [widths[f] for f in features], [sizes[f] for f in features]))]


def model_cost(spec: ModelSpec, widths: list[int], levels: int) -> tuple[int, int]:
    """(params, MACs) of the detector whose cfg layers 0..len(widths)-1 have these output widths."""
    rows = layer_costs(spec, widths, levels)
    return sum(r[1] for r in rows), sum(r[2] for r in rows)
