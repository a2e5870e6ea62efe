"""Configuration: defaults for every key, YAML recipes and trailing KEY VALUE overrides.

The key names are the original SSD code's (lufficc/SSD style) so its users feel at home:

    cfg = load_config("ssdlab/configs/course/plain_shapes.yaml", ["SOLVER.MAX_ITER", "100"])
    cfg.SOLVER.MAX_ITER  # -> 100 (typed from the default)
"""
from __future__ import annotations

import ast
import copy
import difflib
import logging
from pathlib import Path
from typing import Any, Iterable

import yaml

from ssdlab.errors import ConfigError
from ssdlab.files import read_text

PACKAGE_CONFIGS = Path(__file__).resolve().parent / "configs"
UNREAD_KEYS = {  # keys of the original SSD code's recipes that nothing in ssdlab reads: dropped with a warning, not kept
    "MODEL.META_ARCHITECTURE": "ssdlab builds one detector, the SSD",
    "MODEL.BACKBONE.NAME": "the backbone is the cfg file MODEL.BACKBONE.CFG",
    "MODEL.BACKBONE.OUT_CHANNELS": "the level widths come from the feature layers of MODEL.BACKBONE.CFG",
    "MODEL.BOX_HEAD.NAME": "the head is chosen by MODEL.BOX_HEAD.PREDICTOR",
    "TEST.MAX_PER_CLASS": "detections are capped per image by TEST.MAX_PER_IMAGE",
}

log = logging.getLogger(__name__)


class CfgNode(dict):
    """A dict with attribute access that can be frozen against accidental edits."""

    def __init__(self, init: dict | None = None):
        super().__init__()
        object.__setattr__(self, "_frozen", False)
        for key, value in (init or {}).items():
            self[key] = CfgNode(value) if isinstance(value, dict) else value

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        if self._frozen:
            raise ConfigError(f"config is frozen; cannot set {name!r} (use cfg.clone() first)")
        self[name] = value

    def freeze(self) -> "CfgNode":
        """Make this node and its children read-only (attribute writes raise)."""
        object.__setattr__(self, "_frozen", True)
        for value in self.values():
            if isinstance(value, CfgNode):
                value.freeze()
        return self

    def clone(self) -> "CfgNode":
        """A deep, unfrozen copy."""
        return CfgNode(copy.deepcopy(self.to_dict()))

    def to_dict(self) -> dict:
        """Plain nested dicts and lists (safe for YAML, JSON and torch.save)."""
        return {k: v.to_dict() if isinstance(v, CfgNode) else copy.deepcopy(v) for k, v in self.items()}

    def dump(self) -> str:
        """The config as YAML text."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _defaults() -> dict:
    """Every key ssdlab knows, with its default value (the original SSD code's where it had one)."""
    return {
        "MODEL": {
            "DEVICE": "auto",  # auto = cuda when present, else cpu
            "THRESHOLD": 0.5,  # IoU for a prior to match a ground-truth box
            "NUM_CLASSES": 21,  # including background
            "NEG_POS_RATIO": 3,
            "CENTER_VARIANCE": 0.1,
            "SIZE_VARIANCE": 0.2,
            "FINE_TUNE": False,  # start from MODEL.WEIGHTS (another ssdlab checkpoint)
            "WEIGHTS": "",
            "BACKBONE": {
                "PRETRAINED": False,  # load ImageNet weights into the layers up to backbone=1
                "CFG": "vgg_bn_ssd300.cfg",
                "WEIGHTS": "",  # torchvision ImageNet state dict; default: torch hub cache
            },
            "PRIORS": {
                "FEATURE_MAPS": [38, 19, 10, 5, 3, 1],
                "STRIDES": [8, 16, 32, 64, 100, 300],
                "MIN_SIZES": [30, 60, 111, 162, 213, 264],
                "MAX_SIZES": [60, 111, 162, 213, 264, 315],
                "ASPECT_RATIOS": [[2], [2, 3], [2, 3], [2, 3], [2], [2]],
                "BOXES_PER_LOCATION": [4, 6, 6, 6, 4, 4],
                "CLIP": True,
            },
            "BOX_HEAD": {
                "PREDICTOR": "SSDBoxPredictor",  # or SSDLiteBoxPredictor
                "LITE_SEPARABLE": -1,  # SSDLite: levels with separable predictors (-1: all but the last)
            },
        },
        "INPUT": {
            "IMAGE_SIZE": 300,
            "PIXEL_MEAN": [123, 117, 104],  # RGB, subtracted; no division by std
            "CHANNELS": 3,
            "EXPAND_MAX_RATIO": 4.0,  # zoom-out augmentation: canvas up to this many times the image (<= 1: off)
            "CROP": True,  # IoU-constrained random crop augmentation
            "PHOTOMETRIC": True,  # colour distortion augmentation (brightness, contrast, saturation, hue, channels)
        },
        "DATASETS": {
            "TRAIN": [],  # names (voc_2007_trainval, coco_2014_train, ...) or paths (.data file, shapes folder)
            "TEST": [],
            "CACHE": True,  # keep decoded images in memory (small datasets)
            "SKIP_BAD_IMAGES": False,  # leave out (with one warning) images that are missing or cannot be decoded
        },
        "DATA_LOADER": {
            "NUM_WORKERS": 2,
            "PIN_MEMORY": True,
        },
        "SOLVER": {
            "MAX_ITER": 120000,
            "LR_STEPS": [80000, 100000],
            "GAMMA": 0.1,
            "BATCH_SIZE": 32,
            "LR": 1e-3,
            "MOMENTUM": 0.9,
            "WEIGHT_DECAY": 5e-4,
            "WARMUP_FACTOR": 1.0 / 3,
            "WARMUP_ITERS": 500,
            "OPTIMIZER": "SGD",  # SGD | AdamW
            "SCHEDULER": "multistep",  # multistep | cosine
            "SEED": 0,
            "NUM_THREADS": 0,  # 0 = all physical cores
            "LOG_PERIOD": 10,
            "EVAL_PERIOD": 0,  # 0 = only at the end
            "CHECKPOINT_PERIOD": 2500,
            "KEEP_LAST": 3,
            "CHANNELS_LAST": False,
            "PRECISION": "fp32",  # fp32 | bf16 | auto (bf16 where the device computes it natively): ssdlab.engine.precision
            "AUGMENT": True,
        },
        "TEST": {
            "NMS_THRESHOLD": 0.45,
            "CONFIDENCE_THRESHOLD": 0.01,
            "MAX_PER_IMAGE": 100,
            "PRE_NMS_TOP_K": 400,  # candidates kept per class before NMS (-1 = all)
            "BATCH_SIZE": 10,
            "BN_FUSE": False,
            "USE_07_METRIC": False,  # VOC AP: False = area under the envelope, True = 11-point
        },
        "PRUNE": {
            "TYPE": "no",  # no | normal | shortcut | coupled (sparse training and the prune mode)
            "SR": 0.001,
            "SR_SCHEDULE": "constant",  # constant | step
            "SR_STEP_AT": 0.5,  # step: fraction of MAX_ITER after which SR is scaled
            "SR_STEP_FACTOR": 0.1,
            "SR_WEIGHT": "none",  # none | params | macs | latency: scale each layer's SR by what one of its channels carries
            "SR_PENALTY": "l1",  # l1: SR·sign(γ) (network slimming) | hoyer: the same less its part along γ (scale-free)
            "SR_TARGET": 0.0,  # > 0: penalise only the channels a plan keeping this share of the MACs removes
            "ROUND_TO": 8,
            "GAMMA_SCALE": "global",  # global: rank raw |γ| (network slimming) | layer: |γ| over its layer's largest
        },
        "DISTILL": {  # fine-tuning a pruned model from its unpruned teacher (ssdlab.prune.distill)
            "TEACHER": "",  # teacher checkpoint; empty = no distillation
            "TEMPERATURE": 2.0,
            "CLS_WEIGHT": 1.0,
            "BOX_WEIGHT": 1.0,
        },
        "QUANTIZATION": {
            "TYPE": "no",  # no | dorefa | IAO | BWN
            "WBITS": 8,
            "ABITS": 8,
            "FINAL": False,  # also quantize the prediction heads
            "DOREFA_ACT_SCALE": 0.1,
            "IAO_MODE": "symmetric",  # symmetric | asymmetric
            "FREEZE_OBSERVER_ITER": -1,
            "FREEZE_BN_ITER": -1,
        },
        "OUTPUT_DIR": "outputs",
    }


# Numeric keys with a range: (lowest, highest, whether the lowest itself is refused, what the value is).
RANGES: dict[str, tuple[float, float | None, bool, str]] = {
    "MODEL.NUM_CLASSES": (2, None, False, "classes including the background"),
    "MODEL.THRESHOLD": (0, 1, True, "the IoU a prior needs to match a box"),
    "MODEL.NEG_POS_RATIO": (1, None, False, "negatives kept per positive"),
    "MODEL.CENTER_VARIANCE": (0, None, True, "the box coder's centre variance"),
    "MODEL.SIZE_VARIANCE": (0, None, True, "the box coder's size variance"),
    "INPUT.IMAGE_SIZE": (1, None, False, "the square input side in pixels"),
    "INPUT.CHANNELS": (1, None, False, "image channels"),
    "DATA_LOADER.NUM_WORKERS": (0, None, False, "loader processes (0: load in the training process)"),
    "SOLVER.MAX_ITER": (1, None, False, "training iterations"),
    "SOLVER.BATCH_SIZE": (1, None, False, "images per training step"),
    "SOLVER.LR": (0, None, True, "the learning rate (0 would train nothing)"),
    "SOLVER.GAMMA": (0, None, True, "the learning-rate decay factor"),
    "SOLVER.MOMENTUM": (0, 1, False, "SGD momentum"),
    "SOLVER.WEIGHT_DECAY": (0, None, False, "weight decay"),
    "SOLVER.WARMUP_FACTOR": (0, 1, True, "the warm-up's starting fraction of the learning rate"),
    "SOLVER.WARMUP_ITERS": (0, None, False, "warm-up iterations"),
    "SOLVER.NUM_THREADS": (0, None, False, "CPU threads (0: all physical cores)"),
    "SOLVER.LOG_PERIOD": (1, None, False, "iterations between log lines"),
    "SOLVER.EVAL_PERIOD": (0, None, False, "iterations between evaluations (0: only at the end)"),
    "SOLVER.CHECKPOINT_PERIOD": (0, None, False, "iterations between checkpoints (0: only at the end)"),
    "SOLVER.KEEP_LAST": (0, None, False, "periodic checkpoints kept (0: all)"),
    "TEST.NMS_THRESHOLD": (0, 1, True, "the NMS IoU threshold"),
    "TEST.CONFIDENCE_THRESHOLD": (0, 1, False, "the lowest score a detection keeps"),
    "TEST.MAX_PER_IMAGE": (1, None, False, "detections kept per image"),
    "TEST.BATCH_SIZE": (1, None, False, "images per evaluation batch"),
    "PRUNE.SR": (0, None, False, "the L1 strength on BN γ"),
    "PRUNE.SR_STEP_AT": (0, 1, False, "the fraction of MAX_ITER after which SR is scaled"),
    "PRUNE.SR_STEP_FACTOR": (0, None, False, "the factor SR is scaled by"),
    "PRUNE.ROUND_TO": (1, None, False, "the multiple kept channels are rounded to"),
    "PRUNE.SR_TARGET": (0, 1, False, "the share of the MACs the targeted penalty plans for (0: off)"),
    "DISTILL.TEMPERATURE": (0, None, True, "the distillation temperature"),
    "DISTILL.CLS_WEIGHT": (0, None, False, "the class distillation weight"),
    "DISTILL.BOX_WEIGHT": (0, None, False, "the box distillation weight"),
}


CHOICES: dict[str, tuple[str, ...]] = {  # the keys whose value is one of a few words, checked where they are set
    "SOLVER.OPTIMIZER": ("SGD", "AdamW"),
    "SOLVER.SCHEDULER": ("multistep", "cosine"),
    "SOLVER.PRECISION": ("fp32", "bf16", "auto"),
    "PRUNE.TYPE": ("no", "normal", "shortcut", "coupled"),
    "PRUNE.SR_SCHEDULE": ("constant", "step"),
    "PRUNE.SR_WEIGHT": ("none", "params", "macs", "latency"),
    "PRUNE.SR_PENALTY": ("l1", "hoyer"),
    "PRUNE.GAMMA_SCALE": ("global", "layer"),
    "QUANTIZATION.TYPE": ("no", "dorefa", "IAO", "BWN"),
    "QUANTIZATION.IAO_MODE": ("symmetric", "asymmetric"),
}


def check_choice(key: str, value: Any, where: str) -> None:
    """ConfigError naming where and the key when a word-valued key (CHOICES) holds another word."""
    if key not in CHOICES or value in CHOICES[key]:
        return
    same = [c for c in CHOICES[key] if c.lower() == str(value).lower()]
    hint = f"; did you mean {same[0]!r}?" if same else _closest(str(value), CHOICES[key])
    raise ConfigError(f"{where}: {key} = {value!r} is unknown; use one of {', '.join(CHOICES[key])}{hint}")


def check_range(key: str, value: Any, where: str) -> None:
    """ConfigError naming where and the key when a numeric value lies outside its range in RANGES."""
    if key not in RANGES:
        return
    low, high, open_low, meaning = RANGES[key]
    if value != value or (value <= low if open_low else value < low) or (high is not None and value > high):
        bound = f"above {low}" if open_low else f"at least {low}"
        span = f"between {low} and {high}" + (f" (not {low} itself)" if open_low else "") if high is not None else bound
        raise ConfigError(f"{where}: {key} = {value!r} must be {span} ({meaning})")


def get_default_config() -> CfgNode:
    """A fresh, unfrozen config holding every default."""
    return CfgNode(_defaults())


def _closest(key: str, choices: Iterable[str]) -> str:
    """A 'did you mean' hint for an unknown key."""
    match = difflib.get_close_matches(key, list(choices), n=1, cutoff=0.4)
    return f"; did you mean {match[0]!r}?" if match else ""


def _all_keys(node: dict, prefix: str = "") -> list[str]:
    """Every dotted key below node."""
    keys = []
    for key, value in node.items():
        full = f"{prefix}{key}"
        keys.append(full)
        if isinstance(value, dict):
            keys += _all_keys(value, full + ".")
    return keys


def _coerce(value: Any, default: Any, key: str, where: str) -> Any:
    """Convert value (from YAML or the command line) to the type of the default."""
    kind = type(default).__name__
    bad = ConfigError(f"{where}: {key} = {value!r} should be {'an' if kind[0] in 'aeiou' else 'a'} {kind} "
                      f"like {default!r}")
    if isinstance(value, str) and not isinstance(default, str):
        value = _parse_text(value, default, bad)
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if value in (0, 1):
            return bool(value)
        raise bad
    if isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise bad
    if isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise bad
    if isinstance(default, (list, tuple)):
        if isinstance(value, (list, tuple)):
            return [list(v) if isinstance(v, tuple) else v for v in value]
        raise bad
    if isinstance(default, str):
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise bad
    return value


def _parse_text(text: str, default: Any, bad: ConfigError) -> Any:
    """Parse a command-line or quoted-YAML string as a Python/YAML literal."""
    if isinstance(default, bool) and text.lower() in ("true", "false", "yes", "no", "on", "off"):
        return text.lower() in ("true", "yes", "on")
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        pass
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        raise bad from None


def unread(key: str, where: str, quiet: bool = False) -> bool:
    """True (after a warning naming where, unless quiet) for a key in UNREAD_KEYS."""
    if key in UNREAD_KEYS and not quiet:
        log.warning("%s: %s is not read by ssdlab (%s); remove it", where, key, UNREAD_KEYS[key])
    return key in UNREAD_KEYS


def merge_dict(cfg: CfgNode, update: dict, where: str, prefix: str = "", quiet: bool = False) -> None:
    """Merge a nested dict into cfg, checking every key and typing every value (UNREAD_KEYS: dropped, with a
    warning unless quiet)."""
    for key, value in update.items():
        full = f"{prefix}{key}"
        if unread(full, where, quiet):
            continue
        if key not in cfg:
            raise ConfigError(f"{where}: unknown key {full!r}{_closest(full, _all_keys(get_default_config()))}")
        if isinstance(cfg[key], CfgNode):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: {full} is a section; give it keys, not {value!r}")
            merge_dict(cfg[key], value, where, full + ".", quiet)
        else:
            cfg[key] = _coerce(value, cfg[key], full, where)
            check_range(full, cfg[key], where)
            check_choice(full, cfg[key], where)


def merge_overrides(cfg: CfgNode, opts: list[str], where: str = "command line") -> None:
    """Apply trailing 'KEY VALUE KEY VALUE ...' overrides."""
    if len(opts) % 2:
        raise ConfigError(f"{where}: overrides come in KEY VALUE pairs; {opts[-1]!r} has no value")
    for key, text in zip(opts[0::2], opts[1::2]):
        if unread(key, where):
            continue
        node, parts = cfg, key.split(".")
        for i, part in enumerate(parts):
            if not isinstance(node, dict) or part not in node:
                raise ConfigError(f"{where}: unknown key {key!r}{_closest(key, _all_keys(get_default_config()))}")
            if i < len(parts) - 1:
                node = node[part]
        if isinstance(node[parts[-1]], CfgNode):
            raise ConfigError(f"{where}: {key} is a section; name one of its keys")
        node[parts[-1]] = _coerce(text, node[parts[-1]], key, where)
        check_range(key, node[parts[-1]], where)
        check_choice(key, node[parts[-1]], where)


class UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load that refuses a key given twice in one mapping (plain YAML silently keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        """The mapping, after checking that no key repeats (the error points at the second one)."""
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, str):
                continue
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is given twice in this section; "
                                                        "keep one", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def read_yaml(path: Path) -> dict:
    """Load a YAML recipe with safe_load; errors name the file."""
    if path.is_dir():
        raise ConfigError(f"config file {path} is a folder; pass a .yaml recipe in it as --config-file "
                          f"(recipes ship in {PACKAGE_CONFIGS})")
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass an existing --config-file "
                          f"(recipes ship in {PACKAGE_CONFIGS})")
    try:
        data = yaml.load(read_text(path, ConfigError, "a YAML recipe (MODEL:, SOLVER:, ...)"), Loader=UniqueKeyLoader)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if data is None:
        raise ConfigError(f"{path} is empty, which would train the defaults (VGG16 SSD300 on VOC); give the "
                          "sections to set (MODEL:, DATASETS:, SOLVER:, ...) or start from a shipped recipe "
                          f"in {PACKAGE_CONFIGS}")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (MODEL:, SOLVER:, ...)")
    return data


def resolve_file(name: str, base: Path | None = None, subdir: str = "backbones") -> Path:
    """Find a file given as absolute, relative to cwd, to base, or shipped in ssdlab/configs/<subdir>."""
    path = Path(name).expanduser()
    candidates = [path] if path.is_absolute() else [
        Path.cwd() / path,
        *([base / path] if base else []),
        PACKAGE_CONFIGS / path,  # a shipped file as portable() names it
        PACKAGE_CONFIGS / subdir / path.name,
    ]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    tried = ", ".join(dict.fromkeys(str(c) for c in candidates))  # each place once
    raise ConfigError(f"cannot find {name!r} (looked in: {tried})")


def load_config(config_file: str | Path | None = None, opts: list[str] | None = None,
                freeze: bool = True) -> CfgNode:
    """Defaults, then the YAML recipe, then KEY VALUE overrides; the backbone cfg path is resolved."""
    cfg = get_default_config()
    base = None
    if config_file:
        path = Path(config_file)
        if not path.is_file():
            try:
                path = resolve_file(str(config_file), subdir="course")
            except ConfigError:
                read_yaml(path)  # raises the 'does not exist' message
        merge_dict(cfg, read_yaml(path), where=str(path))
        base = path.resolve().parent
    merge_overrides(cfg, list(opts or []))
    cfg.MODEL.BACKBONE.CFG = portable(resolve_file(cfg.MODEL.BACKBONE.CFG, base))
    return cfg.freeze() if freeze else cfg


def portable(path: Path) -> str:
    """A shipped file as its path inside ssdlab/configs (the same in every clone and install), others as given."""
    return path.relative_to(PACKAGE_CONFIGS).as_posix() if path.is_relative_to(PACKAGE_CONFIGS) else str(path)


def config_from_dict(data: dict) -> CfgNode:
    """Rebuild a config saved in a checkpoint (unknown keys are errors; UNREAD_KEYS of older checkpoints are
    dropped quietly)."""
    cfg = get_default_config()
    merge_dict(cfg, data, where="checkpoint config", quiet=True)
    return cfg.freeze()
