"""Darknet-style backbone .cfg files: parse text into layer dicts, check them, write them back.

A cfg file is a list of sections. Each `[section]` opens one layer and the
`key=value` lines below it set that layer's options; the layer index is the
order in the file, starting at 0. Text after `#` is a comment.

    [convolutional]
    batch_normalize=1
    filters=64
    size=3
    stride=1
    pad=1
    activation=relu

`parse_cfg` returns one dict per layer with every key filled in (defaults
included) plus `"type"` and `"line"` (the line of its `[section]` header);
`write_cfg` turns such a list back into text that parses to the same layers,
which is how pruned models are saved.
"""
from __future__ import annotations

from pathlib import Path

from ssdlab.config import resolve_file
from ssdlab.errors import CfgError, ConfigError
from ssdlab.files import read_text

ACTIVATIONS = ("linear", "relu", "relu6", "leaky", "h_swish")
FEATURES = ("linear", "l2_norm")

# key -> default for each section; None marks a required key. The order is the writer's order.
_CONV_KEYS = {
    "batch_normalize": 0,
    "filters": None,
    "size": None,
    "stride": 1,
    "pad": 0,
    "dilation": 1,
    "bias": 1,
    "activation": "linear",
    "quantization": 0,
    "feature": "",
    "feature_idx": -1,
    "backbone": 0,
}
SCHEMA: dict[str, dict[str, int | str | None]] = {
    "convolutional": _CONV_KEYS,
    "depthwise": _CONV_KEYS,
    "shortcut": {"from": None, "activation": "linear", "feature": "", "feature_idx": -1},
    "maxpool": {"size": None, "stride": None, "pad": 0, "ceil_mode": 0},
}
_TEXT_KEYS = {"activation": ACTIVATIONS, "feature": FEATURES}
# smallest and largest allowed value of each integer key (None = unbounded)
_RANGES: dict[str, tuple[int | None, int | None]] = {
    "filters": (1, None), "size": (1, None), "stride": (1, None), "pad": (0, None),
    "dilation": (1, None), "bias": (0, 1), "batch_normalize": (0, 1), "quantization": (0, 1),
    "backbone": (0, 1), "ceil_mode": (0, 1), "feature_idx": (-1, None), "from": (None, -1),
}
# keys the writer always spells out, even at their default, so a cfg reads on its own
_ALWAYS_WRITTEN = {"batch_normalize", "filters", "size", "stride", "pad", "activation"}


def where(source: str, layers: list[dict], index: int) -> str:
    """'file:line (layer i)' for error messages; layers built in code have no line."""
    line = layers[index].get("line")
    return f"{source}:{line} (layer {index})" if line else f"{source} (layer {index})"


def _typed_value(key: str, text: str, at: str) -> int | str:
    """Convert one value to its type and check its range; errors name the line."""
    if key in _TEXT_KEYS:
        if text not in _TEXT_KEYS[key]:
            raise CfgError(f"{at}: {key}={text!r} is not valid; use one of {', '.join(_TEXT_KEYS[key])}")
        return text
    try:
        value = int(text)
    except ValueError:
        raise CfgError(f"{at}: {key}={text!r} must be an integer") from None
    low, high = _RANGES.get(key, (None, None))
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"between {low} and {high}" if low is not None and high is not None else (
            f"at least {low}" if low is not None else f"at most {high}")
        raise CfgError(f"{at}: {key}={value} is out of range; it must be {bounds}")
    return value


def _fill_defaults(layer: dict, at: str) -> None:
    """Add every missing key with its default; a missing required key is an error."""
    for key, default in SCHEMA[layer["type"]].items():
        if key in layer:
            continue
        if default is None:
            raise CfgError(f"{at}: [{layer['type']}] needs {key}=...; add the line under the header")
        layer[key] = default


def parse_cfg(text: str, source: str = "<string>") -> list[dict]:
    """Parse cfg text into checked layer dicts (every key filled and typed, plus 'type' and 'line')."""
    layers: list[dict] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        at = f"{source}:{number}"
        if not line:
            continue
        if line.startswith("["):
            kind = line[1:-1].strip() if line.endswith("]") else line
            if kind not in SCHEMA:
                raise CfgError(f"{at}: unknown section {line!r}; use one of "
                               + ", ".join(f"[{name}]" for name in SCHEMA))
            layers.append({"type": kind, "line": number})
            continue
        if "=" not in line:
            raise CfgError(f"{at}: expected key=value or [section], got {line!r}")
        if not layers:
            raise CfgError(f"{at}: {line!r} comes before the first [section]; start with a section header")
        key, value = (part.strip() for part in line.split("=", 1))
        layer = layers[-1]
        if key not in SCHEMA[layer["type"]]:
            raise CfgError(f"{at}: unknown key {key!r} in [{layer['type']}]; allowed keys: "
                           + ", ".join(SCHEMA[layer["type"]]))
        if key in layer:
            raise CfgError(f"{at}: {key} is given twice in this [{layer['type']}] section")
        layer[key] = _typed_value(key, value, at)
    for index, layer in enumerate(layers):
        _fill_defaults(layer, where(source, layers, index))
    check_layers(layers, source=source)
    return layers


def cfg_file(path: str | Path) -> Path:
    """A backbone .cfg file found as MODEL.BACKBONE.CFG names it (config.resolve_file: as given, or shipped)."""
    try:
        return resolve_file(str(path))
    except ConfigError:
        raise CfgError(f"backbone cfg {path} does not exist; check MODEL.BACKBONE.CFG") from None


def read_cfg(path: str | Path) -> list[dict]:
    """Read and parse a .cfg file; errors name the file and line."""
    path = cfg_file(path)
    return parse_cfg(read_text(path, CfgError, "a darknet-style backbone .cfg file"), source=str(path))


def write_cfg(layers: list[dict]) -> str:
    """Cfg text for layer dicts; parse_cfg(write_cfg(layers)) equals layers (ignoring 'line')."""
    blocks = []
    for index, layer in enumerate(layers):
        lines = [f"# layer {index}", f"[{layer['type']}]"]
        for key, default in SCHEMA[layer["type"]].items():
            value = layer.get(key, default)
            if default is None or value != default or key in _ALWAYS_WRITTEN:
                lines.append(f"{key}={value}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def infer_channels(layers: list[dict], in_channels: int = 3, source: str = "<cfg>") -> list[int]:
    """Output channels of every layer; checks shortcut targets, shortcut joins and depthwise widths."""
    channels: list[int] = []
    for index, layer in enumerate(layers):
        previous = channels[-1] if channels else in_channels
        at = where(source, layers, index)
        kind = layer["type"]
        if kind == "convolutional":
            channels.append(layer["filters"])
        elif kind == "depthwise":
            if layer["filters"] != previous:
                raise CfgError(f"{at}: [depthwise] has filters={layer['filters']} but its input has "
                               f"{previous} channels; a depthwise conv keeps the width, set filters={previous}")
            channels.append(previous)
        elif kind == "maxpool":
            channels.append(previous)
        elif kind == "shortcut":
            target = index + layer["from"]
            if layer["from"] >= 0 or target < 0:
                raise CfgError(f"{at}: [shortcut] from={layer['from']} points to layer {target}, outside "
                               f"layers 0..{index - 1}; use a negative offset between -{index} and -1")
            if channels[target] != previous:
                raise CfgError(f"{at}: [shortcut] adds layer {target} ({channels[target]} channels) to "
                               f"layer {index - 1} ({previous} channels); the widths must match")
            channels.append(previous)
        else:
            raise CfgError(f"{at}: unknown layer type {kind!r}")
    return channels


def feature_layers(layers: list[dict], source: str = "<cfg>") -> list[int]:
    """Indices of the head-level layers ordered by feature_idx; checks the levels are 0..L-1."""
    levels: dict[int, int] = {}
    for index, layer in enumerate(layers):
        level = layer.get("feature_idx", -1)
        if level < 0:
            continue
        if level in levels:
            raise CfgError(f"{where(source, layers, index)}: feature_idx={level} is already used by "
                           f"layer {levels[level]}; each head level needs its own feature_idx")
        levels[level] = index
    if not levels:
        raise CfgError(f"{source}: no layer sends its output to the head; mark at least one layer "
                       "with feature=linear and feature_idx=0")
    missing = sorted(set(range(len(levels))) - set(levels))
    if missing:
        after = min(level for level in levels if level > missing[0])
        raise CfgError(f"{where(source, layers, levels[after])}: feature_idx={after} but level {missing[0]} "
                       f"is missing; head levels must be numbered 0..{len(levels) - 1} without gaps")
    return [levels[level] for level in range(len(levels))]


def _check_flags(layers: list[dict], source: str) -> None:
    """feature and feature_idx go together, shortcuts add without activation, one backbone=1 at most."""
    backbone_ends = []
    for index, layer in enumerate(layers):
        at = where(source, layers, index)
        if "feature" in layer and bool(layer["feature"]) != (layer["feature_idx"] >= 0):
            raise CfgError(f"{at}: feature={layer['feature']!r} and feature_idx={layer['feature_idx']} "
                           "must be given together (feature=linear|l2_norm with feature_idx>=0)")
        if layer["type"] == "shortcut" and layer["activation"] != "linear":
            raise CfgError(f"{at}: [shortcut] applies no activation after the add; use activation=linear")
        if layer.get("backbone", 0):
            backbone_ends.append(index)
    if len(backbone_ends) > 1:
        raise CfgError(f"{where(source, layers, backbone_ends[1])}: backbone=1 is already set on layer "
                       f"{backbone_ends[0]}; mark only the last layer that takes ImageNet weights")


def check_layers(layers: list[dict], in_channels: int = 3, source: str = "<cfg>") -> list[int]:
    """Every cross-layer check of a parsed cfg; returns the output channels of every layer."""
    _check_flags(layers, source)
    channels = infer_channels(layers, in_channels, source)
    feature_layers(layers, source)
    return channels


def backbone_end(layers: list[dict]) -> int:
    """Index of the layer marked backbone=1, or -1 when none is."""
    return next((i for i, layer in enumerate(layers) if layer.get("backbone", 0)), -1)


def read_backbone_text(cfg) -> tuple[str, str]:
    """(text, path) of the backbone cfg file named by MODEL.BACKBONE.CFG."""
    path = resolve_file(cfg.MODEL.BACKBONE.CFG)
    return read_text(path, CfgError, "a darknet-style backbone .cfg file (MODEL.BACKBONE.CFG)"), str(path)


def check_follows_recipe(cfg_text: str, cfg) -> list[dict]:
    """A start checkpoint's layers (its cfg_text), checked to follow MODEL.BACKBONE.CFG layer by layer (same types;
    widths may differ, and a pruned model may end early): ConfigError naming both otherwise."""
    own, recipe = parse_cfg(cfg_text), parse_cfg(read_backbone_text(cfg)[0])
    if len(own) > len(recipe) or any(a["type"] != b["type"] for a, b in zip(own, recipe)):
        raise ConfigError(f"MODEL.WEIGHTS {cfg.MODEL.WEIGHTS} has a backbone of {len(own)} layers that does not "
                          f"follow MODEL.BACKBONE.CFG {cfg.MODEL.BACKBONE.CFG} ({len(recipe)} layers) layer by "
                          "layer, so the run would train another network than its recipe names; pick the recipe "
                          "whose cfg the checkpoint was trained from, or set MODEL.BACKBONE.CFG to it")
    return recipe
