"""Tests for ssdlab.prune.surgery: masking, compensation and the compact model (REFERENCE §4.6-4.7).

The shipped detectors are built once per module (VGG16-SSD300 twice: with and without L2Norm)
and given seeded random BN statistics and conv biases, with γ a mix of tiny and large values, so
that a plan prunes something everywhere and every pruned channel carries a non-zero constant.
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from ssdlab.config import load_config
from ssdlab.engine import checkpoint as ckpt
from ssdlab.engine.profile import count_macs, count_params
from ssdlab.errors import PruneError
from ssdlab.model.backbone import Shortcut
from ssdlab.model.build import build_model
from ssdlab.model.cfg import feature_layers, parse_cfg
from ssdlab.model.ssd import SSD
from ssdlab.prune.plan import prunable_groups
from ssdlab.prune.surgery import bn_gammas, compact_model, make_plan, masked_model, prune_model

TESTS = Path(__file__).resolve().parent
CONFIGS = TESTS.parent / "ssdlab" / "configs"
NO_PRETRAINED = ["MODEL.BACKBONE.PRETRAINED", "False"]
SHIPPED = ["course/plain_shapes.yaml", "course/residual_shapes.yaml", "mobile_v2_ssd_voc0712.yaml",
           "mini_ssd_hand_fpga.yaml", "vgg_bn_ssd300_voc0712.yaml", "vgg_bn_ssd300_voc0712_fpga.yaml"]
# --max: a layer whose γ we shrink, and the head levels that must survive (levels before that layer).
# mini_ssd has a single head level at its last layer, so any emptied layer comes before it.
WEAK = {"course/plain_shapes.yaml": (7, 2), "course/residual_shapes.yaml": (14, 3),
        "mobile_v2_ssd_voc0712.yaml": (64, 2), "mini_ssd_hand_fpga.yaml": None,
        "vgg_bn_ssd300_voc0712.yaml": (22, 3), "vgg_bn_ssd300_voc0712_fpga.yaml": (22, 3)}
VARIANTS = {"normal": ("normal", False), "shortcut": ("shortcut", False), "coupled": ("coupled", False),
            "regular": ("coupled", True), "max": ("shortcut", False)}
TOL = 1e-4


# --- helpers ------------------------------------------------------------------------------------

@torch.no_grad()
def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Seeded BN (signed γ: half tiny, half large; β, running stats) and conv biases."""
    g = torch.Generator().manual_seed(seed)

    def uniform(n, low, high):
        return torch.rand(n, generator=g) * (high - low) + low

    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            scale = torch.where(torch.rand(n, generator=g) < 0.5, 0.01, 1.0)
            sign = torch.where(torch.rand(n, generator=g) < 0.2, -1.0, 1.0)
            module.weight.copy_(uniform(n, 0.05, 1.0) * scale * sign)
            module.bias.copy_(uniform(n, -0.5, 0.5))
            module.running_mean.copy_(uniform(n, -0.2, 0.2))
            module.running_var.copy_(uniform(n, 0.5, 2.0))
        elif isinstance(module, nn.Conv2d) and module.bias is not None:
            module.bias.copy_(uniform(module.bias.numel(), -0.1, 0.1))
    return model


def load(recipe: str, *overrides: str):
    return load_config(CONFIGS / recipe, [*NO_PRETRAINED, *overrides])


def image(size: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(seed))


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def layer_outputs(backbone, x: torch.Tensor) -> list[torch.Tensor]:
    """The output of every cfg layer (as CfgBackbone.forward computes them, before any L2Norm)."""
    outs: list[torch.Tensor] = []
    for module in backbone.module_list:
        x = module(x, outs[module.source]) if isinstance(module, Shortcut) else module(x)
        outs.append(x)
    return outs


def level_priors(cfg, levels: int) -> int:
    """Priors of the first `levels` head levels, from MODEL.PRIORS alone."""
    p = cfg.MODEL.PRIORS
    return sum(f * f * b for f, b in zip(p.FEATURE_MAPS[:levels], p.BOXES_PER_LOCATION[:levels]))


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def meta_macs(model: SSD) -> int:
    """MACs of a model counted on a shape-only copy (no arithmetic)."""
    return count_macs(copy.deepcopy(model).to("meta"), model.cfg.INPUT.IMAGE_SIZE)


# --- shared, module-scoped models and pruning results -------------------------------------------

class Zoo:
    """Each shipped detector built and randomized once; each (recipe, variant) pruned once."""

    def __init__(self):
        self.models: dict[str, SSD] = {}
        self.results: dict[tuple[str, str], tuple] = {}

    def model(self, recipe: str) -> SSD:
        if recipe not in self.models:
            torch.manual_seed(0)
            self.models[recipe] = randomize(build_model(load(recipe)).eval(), seed=SHIPPED.index(recipe))
        return self.models[recipe]

    def weak_model(self, recipe: str) -> SSD:
        """The model with one layer's |γ| shrunk to at most 0.02 (above the tiny ones, below the rest)."""
        key = recipe + "#weak"
        if key not in self.models:
            model = copy.deepcopy(self.model(recipe))
            bn = model.backbone.module_list[WEAK[recipe][0]].bn
            with torch.no_grad():
                bn.weight.copy_(torch.linspace(0.001, 0.02, bn.num_features) * torch.where(bn.weight < 0, -1.0, 1.0))
            self.models[key] = model
        return self.models[key]

    def pruned(self, recipe: str, variant: str):
        """(model, plan, compensated masked model, compact model) for a variant of VARIANTS."""
        key = (recipe, variant)
        if key not in self.results:
            mode, regular = VARIANTS[variant]
            if variant == "max":
                model = self.weak_model(recipe)
                probe = make_plan(model, 0.0, mode)
                n = sum(probe.widths_before[i] for i in probe.producers)
                result = make_plan(model, probe.highest_safe + 1 / n + 1e-9, mode, drop_levels=True)
            else:
                model = self.model(recipe)
                result = make_plan(model, 0.5, mode, regular)
            masked = masked_model(model, result, "compensated")
            self.results[key] = (model, result, masked, compact_model(masked, result))
        return self.results[key]


@pytest.fixture(scope="module")
def zoo() -> Zoo:
    return Zoo()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Batch-1 forwards of these models gain little from a second thread, and when the two cores are
    shared (a training run, pytest -n) OpenMP's waiting threads made them up to 40x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- 13. compensated masked model == compact model, every shipped cfg and mode ------------------

PLAIN_NETS = ["vgg_bn_ssd300_voc0712.yaml", "vgg_bn_ssd300_voc0712_fpga.yaml", "course/plain_shapes.yaml",
              "mini_ssd_hand_fpga.yaml"]  # no shortcut, no depthwise conv: every mode prunes the same
# mini_ssd + max: see the next test. VGG in shortcut/coupled mode: the same plan as normal mode
# (test_modes_coincide_without_shortcuts_or_depthwise), so its two costly forwards are not repeated.
COMBOS = [(recipe, variant) for recipe in SHIPPED for variant in VARIANTS
          if not (variant == "max" and WEAK[recipe] is None)
          and not (recipe.startswith("vgg") and variant in ("shortcut", "coupled"))]


def test_max_on_a_single_level_model_refuses(zoo):
    """mini_ssd's only head level is its last layer: --max past the safe ratio would leave no level."""
    model = zoo.model("mini_ssd_hand_fpga.yaml")
    probe = make_plan(model, 0.0)
    n = sum(probe.widths_before[i] for i in probe.producers)
    assert make_plan(model, probe.highest_safe, drop_levels=True).levels == 1
    with pytest.raises(PruneError, match="no head level would remain"):
        make_plan(model, probe.highest_safe + 1 / n + 1e-9, drop_levels=True)


@pytest.mark.parametrize("recipe,variant", COMBOS)
def test_masked_and_compact_agree(zoo, recipe, variant):
    model, result, masked, compact = zoo.pruned(recipe, variant)
    cfg = model.cfg
    assert result.channels_after < result.channels_before  # something was pruned
    x = image(cfg.INPUT.IMAGE_SIZE)
    with torch.no_grad():
        cls_m, box_m = masked.forward_raw(x)
        cls_c, box_c = compact.forward_raw(x)
    n = level_priors(cfg, result.levels)
    assert cls_c.shape == (1, n, cfg.MODEL.NUM_CLASSES) and box_c.shape == (1, n, 4)
    if variant == "max":
        weak, levels = WEAK[recipe]
        assert (result.levels, result.emptied[0]) == (levels, weak)
        assert result.cut == feature_layers(model.backbone.defs)[levels - 1]
        assert n < len(model.priors)
    else:
        assert result.levels == len(cfg.MODEL.PRIORS.FEATURE_MAPS) and n == len(model.priors)
    err = max(max_diff(cls_m[:, :n], cls_c), max_diff(box_m[:, :n], box_c))
    assert err <= TOL, f"{recipe} {variant}: masked vs compact differ by {err:.3g}"
    assert cls_c.abs().max() > 0.01  # not a trivially zero comparison
    # the plan's cost is the compact model's
    assert count_params(compact) == result.params_after < count_params(model) == result.params_before
    assert meta_macs(compact) == result.macs_after
    # the compact widths are the kept counts
    for i, layer in enumerate(compact.backbone.defs):
        if layer["type"] in ("convolutional", "depthwise"):
            assert compact.backbone.module_list[i].conv.out_channels == len(result.kept_out(i))


@pytest.mark.parametrize("recipe", PLAIN_NETS)
def test_modes_coincide_without_shortcuts_or_depthwise(zoo, recipe):
    """Plain nets have only normal groups: shortcut and coupled mode prune exactly the same channels."""
    model = zoo.model(recipe)
    defs = model.backbone.defs
    assert not any(layer["type"] in ("shortcut", "depthwise") for layer in defs)
    groups = [g.members for g in prunable_groups(defs, "normal")]
    normal = make_plan(model, 0.5, "normal")
    for mode in ("shortcut", "coupled"):
        assert [g.members for g in prunable_groups(defs, mode)] == groups
        other = make_plan(model, 0.5, mode)
        assert other.kept.keys() == normal.kept.keys() and other.threshold == normal.threshold
        assert all(np.array_equal(other.kept[i], normal.kept[i]) for i in normal.kept)
        assert (other.params_after, other.macs_after) == (normal.params_after, normal.macs_after)


def test_masked_model_masks_exactly_the_pruned_channels(zoo):
    model, result, masked, _ = zoo.pruned("mobile_v2_ssd_voc0712.yaml", "coupled")
    preview = masked_model(model, result, "preview")
    zeroed = masked_model(model, result, "zeroed")
    groups = prunable_groups(model.backbone.defs, "coupled")
    assert any(g.depthwise for g in groups)
    for g in groups:
        kept = result.kept[g.members[0]]
        pruned = np.setdiff1d(np.arange(g.width), kept)
        for i in g.producers + g.depthwise:
            src = model.backbone.module_list[i].bn
            for copy_, beta_zero in ((preview, False), (zeroed, True), (masked, True)):
                bn = copy_.backbone.module_list[i].bn
                assert torch.all(bn.weight[pruned] == 0)
                assert torch.equal(bn.weight[kept], src.weight[kept])
                assert torch.equal(bn.bias[pruned], torch.zeros(len(pruned)) if beta_zero else src.bias[pruned])
                assert torch.equal(bn.bias[kept], src.bias[kept])


def test_bn_gammas_and_make_plan(zoo):
    model = zoo.model("course/residual_shapes.yaml")
    gammas = bn_gammas(model)
    expected = {i: m.bn.weight.detach().abs().numpy() for i, m in enumerate(model.backbone.module_list)
                if model.backbone.defs[i]["type"] in ("convolutional", "depthwise")
                and model.backbone.defs[i]["batch_normalize"]}
    assert gammas.keys() == expected.keys()
    assert all(np.array_equal(gammas[i], expected[i]) for i in gammas)
    assert any((m.bn.weight < 0).any() for m in model.backbone.module_list if hasattr(m, "bn"))
    # PRUNE.ROUND_TO is the default rounding
    cfg16 = load("course/plain_shapes.yaml", "PRUNE.ROUND_TO", "16")
    m16 = build_model(cfg16).eval()
    m16.load_state_dict(zoo.model("course/plain_shapes.yaml").state_dict())
    result = make_plan(m16, 0.5, "normal", regular=True)
    widths = [16, 24, 64, 96, 128, 192, 192, 128, 128]
    counts = [len(k) for i, k in sorted(result.kept.items()) if m16.backbone.defs[i]["type"] == "convolutional"]
    assert len(counts) == len(widths)
    assert all(c % 16 == 0 or c == w for c, w in zip(counts, widths)), counts
    counts8 = [len(k) for i, k in sorted(make_plan(m16, 0.5, "normal", regular=True, round_to=8).kept.items())
               if m16.backbone.defs[i]["type"] == "convolutional"]
    assert all(c % 8 == 0 or c == w for c, w in zip(counts8, widths))
    assert counts8 != counts


def test_prune_model_is_masked_then_compact(zoo):
    model, result, _, compact = zoo.pruned("course/residual_shapes.yaml", "shortcut")
    direct = prune_model(model, result)
    assert same_state(state(direct), state(compact))
    assert direct.cfg_text.split("\n", 1)[1] == compact.cfg_text.split("\n", 1)[1]


# --- 14. compensation is exact where no zero padding is involved ---------------------------------

def conv(filters: int, size: int = 1, bn: int = 1, act: str = "relu", level: int = -1, bias: int = 0,
         kind: str = "convolutional") -> str:
    lines = [f"[{kind}]", f"batch_normalize={bn}", f"filters={filters}", f"size={size}", "stride=1", "pad=0",
             f"bias={bias}", f"activation={act}"]
    if level >= 0:
        lines += ["feature=linear", f"feature_idx={level}"]
    return "\n".join(lines) + "\n"


# 24 px in, valid (pad=0) convs only; sizes after each layer in the comments.
VALID_TEXT = "".join([
    conv(12, size=3),                              # 0: 22 (normal group with the maxpool)
    "[maxpool]\nsize=2\nstride=2\n",               # 1: 11
    conv(16),                                      # 2: chain producer
    conv(8),                                       # 3: normal
    conv(16, act="linear"),                        # 4: chain producer (linear, feeds the add)
    "[shortcut]\nfrom=-3\nactivation=linear\nfeature=linear\nfeature_idx=0\n",  # 5 = 4 + 2: level 0, 11x11
    conv(24, act="relu6"),                         # 6: expand conv
    conv(24, size=3, act="relu6", kind="depthwise"),  # 7: 9, coupled with 6
    conv(16, bn=0, bias=1, act="linear"),          # 8: no BN (blocked), absorbs in its bias
    conv(16, size=3, act="leaky"),                 # 9: 7
    "[maxpool]\nsize=2\nstride=2\n",               # 10: 3
    conv(16, level=1),                             # 11: level 1, 3x3
])


def valid_model(predictor: str) -> SSD:
    cfg = load_config(TESTS / "data" / "tiny.yaml",
                      ["INPUT.IMAGE_SIZE", "24", "MODEL.PRIORS.FEATURE_MAPS", "[11, 3]", "MODEL.PRIORS.STRIDES",
                       "[2, 8]", "MODEL.BOX_HEAD.PREDICTOR", predictor])
    torch.manual_seed(0)
    return randomize(SSD(cfg, cfg_text=VALID_TEXT).eval(), seed=7)


def interior(t: torch.Tensor, kernel: int) -> torch.Tensor:
    """Positions a kernel-size conv with padding (kernel-1)/2 computes without touching the padding."""
    r = kernel // 2
    return t[..., r:t.shape[-2] - r, r:t.shape[-1] - r] if r else t


@pytest.mark.parametrize("predictor", ["SSDBoxPredictor", "SSDLiteBoxPredictor"])
@pytest.mark.parametrize("mode", ["normal", "shortcut", "coupled"])
def test_compensation_is_exact_without_padding(mode, predictor):
    model = valid_model(predictor)
    defs = model.backbone.defs
    result = make_plan(model, 0.5, mode)
    groups = prunable_groups(defs, mode)
    assert {tuple(g.members) for g in groups} >= {(0, 1), (3,), (9, 10), (11,)}
    assert ((2, 4, 5) in {tuple(g.members) for g in groups}) == (mode != "normal")
    assert ((6, 7) in {tuple(g.members) for g in groups}) == (mode == "coupled")
    for g in groups:  # every pruned group loses channels but keeps some
        assert 0 < len(result.kept[g.members[0]]) < g.width, g.members
    preview, zeroed, comp = (masked_model(model, result, how) for how in ("preview", "zeroed", "compensated"))
    x = image(24, seed=3)
    with torch.no_grad():
        outs = {how: layer_outputs(m.backbone, x) for how, m in
                (("preview", preview), ("zeroed", zeroed), ("compensated", comp))}
        features = {how: m.backbone(x) for how, m in
                    (("preview", preview), ("zeroed", zeroed), ("compensated", comp))}
    in_groups = {i: g for g in groups for i in g.members}
    for i in range(len(defs)):
        kept = torch.as_tensor(result.kept_out(i))
        err = max_diff(outs["preview"][i][:, kept], outs["compensated"][i][:, kept])
        assert err <= TOL, f"{mode}: layer {i} kept channels differ by {err:.3g}"
        if i in in_groups:
            pruned = torch.as_tensor(np.setdiff1d(np.arange(in_groups[i].width), result.kept_out(i)))
            assert torch.all(outs["compensated"][i][:, pruned] == 0)
            assert outs["preview"][i][:, pruned].abs().max() > 0.01  # the constant that had to move
    # the premise: a pruned channel is the constant act(β) (and constants add across the shortcut)
    pruned0 = np.setdiff1d(np.arange(12), result.kept_out(0))
    beta0 = torch.relu(model.backbone.module_list[0].bn.bias[pruned0]).view(1, -1, 1, 1)
    assert max_diff(outs["preview"][1][:, pruned0], beta0.expand(1, -1, 11, 11)) <= 1e-6
    if mode != "normal":
        pruned5 = np.setdiff1d(np.arange(16), result.kept_out(5))
        bn2, bn4 = model.backbone.module_list[2].bn, model.backbone.module_list[4].bn
        constant = (torch.relu(bn2.bias[pruned5]) + bn4.bias[pruned5]).view(1, -1, 1, 1)
        assert max_diff(outs["preview"][5][:, pruned5], constant.expand(1, -1, 11, 11)) <= 1e-6
    # without compensation the kept outputs change: the constants matter
    gap = max(max_diff(features["preview"][k][:, torch.as_tensor(result.kept_out(f))],
                       features["zeroed"][k][:, torch.as_tensor(result.kept_out(f))])
              for k, f in enumerate(feature_layers(defs)))
    assert gap > 0.05, gap
    # heads: equal away from their own zero padding (3x3 pad 1 convs; SSDLite's last level is 1x1)
    for level, f in enumerate(feature_layers(defs)):
        for name in ("cls_headers", "reg_headers"):
            head_p, head_c = getattr(preview.box_head, name)[level], getattr(comp.box_head, name)[level]
            kernel = (head_p if isinstance(head_p, nn.Conv2d) else head_p.conv).kernel_size[0]
            with torch.no_grad():
                a = interior(head_p(features["preview"][level]), kernel)
                b = interior(head_c(features["compensated"][level]), kernel)
            assert a.numel() > 0 and max_diff(a, b) <= TOL, (level, name, max_diff(a, b))
    # and the compact model equals the compensated one everywhere
    compact = compact_model(comp, result)
    with torch.no_grad():
        for p, q in zip(comp.forward_raw(x), compact.forward_raw(x)):
            assert max_diff(p, q) <= TOL


def test_consumer_without_bn_or_bias_cannot_absorb():
    text = conv(8) + conv(8, bn=0, bias=0, level=0)
    cfg = load_config(TESTS / "data" / "tiny.yaml", ["INPUT.IMAGE_SIZE", "8", "MODEL.PRIORS.FEATURE_MAPS", "[8]",
                                                     "MODEL.PRIORS.STRIDES", "[1]", "MODEL.PRIORS.MIN_SIZES", "[2]",
                                                     "MODEL.PRIORS.MAX_SIZES", "[4]", "MODEL.PRIORS.ASPECT_RATIOS",
                                                     "[[2]]", "MODEL.PRIORS.BOXES_PER_LOCATION", "[4]"])
    model = randomize(SSD(cfg, cfg_text=text).eval(), seed=8)
    result = make_plan(model, 0.5)
    assert 0 < len(result.kept[0]) < 8
    with pytest.raises(PruneError, match="bias"):
        masked_model(model, result, "compensated")
    masked_model(model, result, "zeroed")  # masking alone needs no absorber


def test_unknown_masking(zoo):
    model, result, _, _ = zoo.pruned("course/plain_shapes.yaml", "normal")
    with pytest.raises(PruneError, match="preview, zeroed, compensated"):
        masked_model(model, result, "soft")


# --- 15. the compact model's cfg and checkpoint -------------------------------------------------

@pytest.mark.parametrize("recipe,variant", [("course/residual_shapes.yaml", "shortcut"),
                                            ("course/plain_shapes.yaml", "regular"),
                                            ("mobile_v2_ssd_voc0712.yaml", "max"),
                                            ("vgg_bn_ssd300_voc0712.yaml", "normal")])
def test_compact_cfg_and_checkpoint_round_trip(zoo, tmp_path, recipe, variant):
    model, result, _, compact = zoo.pruned(recipe, variant)
    text = compact.cfg_text
    assert text.startswith("# pruned by ssdlab")
    layers = parse_cfg(text)
    strip = [{k: v for k, v in layer.items() if k != "line"} for layer in layers]
    assert strip == [{k: v for k, v in layer.items() if k != "line"} for layer in compact.backbone.defs]
    assert len(layers) == result.cut + 1
    original = model.backbone.defs
    for i, layer in enumerate(layers):
        same = {k: v for k, v in original[i].items() if k not in ("line", "filters")}
        assert {k: v for k, v in layer.items() if k not in ("line", "filters")} == same
        if layer["type"] in ("convolutional", "depthwise"):
            assert layer["filters"] == len(result.kept_out(i)) == result.widths_after[i]
    assert compact.backbone.out_channels == [result.widths_after[f] for f in feature_layers(layers)]
    path = ckpt.save_checkpoint(ckpt.make_checkpoint(compact), tmp_path / "pruned.pt")
    loaded = ckpt.load(path)
    assert loaded.cfg_text == text and same_state(state(loaded), state(compact))
    x = image(model.cfg.INPUT.IMAGE_SIZE, seed=5)
    with torch.no_grad():
        for a, b in zip(compact.forward_raw(x), loaded.forward_raw(x)):
            assert torch.equal(a, b)


# --- 16. masking and cutting leave their inputs alone -------------------------------------------

@pytest.mark.parametrize("recipe,variant", [("course/residual_shapes.yaml", "shortcut"),
                                            ("mobile_v2_ssd_voc0712.yaml", "coupled")])
def test_inputs_are_not_modified(zoo, recipe, variant):
    model, result, masked, _ = zoo.pruned(recipe, variant)
    before, masked_before = state(model), state(masked)
    kept_before = {i: k.copy() for i, k in result.kept.items()}
    for how in ("preview", "zeroed", "compensated"):
        copy_ = masked_model(model, result, how)
        assert copy_ is not model and not same_state(state(copy_), before)
    compact_model(masked, result)
    prune_model(model, result)
    assert same_state(state(model), before)
    assert same_state(state(masked), masked_before)
    assert all(np.array_equal(result.kept[i], kept_before[i]) for i in kept_before)
    assert model.training is False
