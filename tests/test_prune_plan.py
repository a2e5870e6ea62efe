"""Tests for ssdlab.prune.plan: channel groups, the |γ| threshold, the safe ratio, regular rounding,
`--max` level dropping and the params/MACs bookkeeping (REFERENCE §4.2-4.5, 4.8).

Everything here is pure: hand-written γ dicts and cfg texts, or the shipped cfgs with seeded random
γ. The few models built (for params/MACs) live on the meta device, so they cost no memory or time.
Every expected number is computed independently of ssdlab.prune (sorted pools, hand counts, torch).
"""
from __future__ import annotations

import math
import statistics
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from ssdlab.config import load_config
from ssdlab.engine.profile import count_macs, count_params
from ssdlab.errors import ConfigError, PruneError
from ssdlab.model.build import build_model
from ssdlab.model.cfg import feature_layers, infer_channels, parse_cfg, read_cfg, write_cfg
from ssdlab.model.ssd import SSD
from ssdlab.prune.plan import (MODES, ModelSpec, budget_plan, channel_groups, model_cost, plan, prunable_groups,
                               prunable_layers,
                               scale_gammas, spatial_sizes, threshold_index)
from ssdlab.prune.surgery import compact_config, compact_layers

CONFIGS = Path(__file__).resolve().parents[1] / "ssdlab" / "configs"
SHIPPED = ["vgg_bn_ssd300_voc0712.yaml", "vgg_bn_ssd300_voc0712_fpga.yaml", "mobile_v2_ssd_voc0712.yaml",
           "mini_ssd_hand_fpga.yaml", "course/plain_shapes.yaml", "course/residual_shapes.yaml"]
NO_PRETRAINED = ["MODEL.BACKBONE.PRETRAINED", "False"]


# --- helpers ------------------------------------------------------------------------------------

def conv(filters: int, size: int = 1, bn: int = 1, act: str = "relu", level: int = -1, pad: int = 0,
         stride: int = 1, bias: int = 0, kind: str = "convolutional", l2: bool = False) -> str:
    """One cfg section for a conv (or depthwise) layer; level >= 0 makes it a head level."""
    lines = [f"[{kind}]", f"batch_normalize={bn}", f"filters={filters}", f"size={size}", f"stride={stride}",
             f"pad={pad}", f"bias={bias}", f"activation={act}"]
    if level >= 0:
        lines += [f"feature={'l2_norm' if l2 else 'linear'}", f"feature_idx={level}"]
    return "\n".join(lines) + "\n"


def shortcut(source: int, level: int = -1) -> str:
    """A [shortcut] section adding layer index+source."""
    text = f"[shortcut]\nfrom={source}\nactivation=linear\n"
    return text + (f"feature=linear\nfeature_idx={level}\n" if level >= 0 else "")


def maxpool(size: int = 2, stride: int = 2) -> str:
    return f"[maxpool]\nsize={size}\nstride={stride}\n"


def spec_of(text: str, image_size: int = 16, boxes: tuple[int, ...] | None = None, classes: int = 3) -> ModelSpec:
    """A ModelSpec for a cfg text (4 boxes per level unless given)."""
    layers = parse_cfg(text)
    levels = len(feature_layers(layers))
    return ModelSpec(layers=layers, image_size=image_size, boxes_per_location=boxes or (4,) * levels,
                     num_classes=classes)


def random_gammas(layers: list[dict], seed: int = 0) -> dict[int, np.ndarray]:
    """Signed γ for every conv/depthwise with BN: half the channels tiny (≤ 0.01), half up to 1."""
    rng = np.random.default_rng(seed)
    widths = infer_channels(layers)
    gammas = {}
    for i, layer in enumerate(layers):
        if layer["type"] in ("convolutional", "depthwise") and layer["batch_normalize"]:
            n = widths[i]
            scale = np.where(rng.random(n) < 0.5, 0.01, 1.0)
            gammas[i] = rng.uniform(0.05, 1.0, n) * scale * rng.choice([-1.0, 1.0], n)
    return gammas


def shipped(recipe: str) -> tuple:
    """(config, spec) of a shipped recipe, from the cfg file alone (no model)."""
    cfg = load_config(CONFIGS / recipe, NO_PRETRAINED)
    return cfg, ModelSpec.from_config(cfg, read_cfg(cfg.MODEL.BACKBONE.CFG))


def floor_index(n: int, percent: float) -> int:
    """int(N·p) in exact arithmetic (p read as the decimal it was written as)."""
    return min(math.floor(Fraction(n) * Fraction(str(percent))), n - 1)


def pool_of(layers_list: list[int], gammas: dict[int, np.ndarray]) -> np.ndarray:
    return np.sort(np.concatenate([np.abs(gammas[i]) for i in layers_list]))


def own_mask(g: np.ndarray, thr: float) -> np.ndarray:
    """One layer's mask: |γ| >= thr, or only its argmax when that is empty (REFERENCE §4.3)."""
    mask = np.abs(g) >= thr
    if not mask.any():
        mask[np.argmax(np.abs(g))] = True
    return mask


# The hand example: three 1x1 convs of 4 channels; the last is the only head level.
HAND_TEXT = conv(4) + conv(4) + conv(4, level=0)
HAND = {0: np.array([0.9, 0.8, 0.1, 0.05]),
        1: np.array([0.2, -0.3, 0.01, 0.02]),  # argmax |γ| at index 1; its max is the weakest
        2: np.array([0.7, 0.6, -0.5, 0.4])}
# sorted |γ|: 0.01 0.02 0.05 0.1 0.2 0.3 0.4 0.5 0.6 0.7 0.8 0.9 (N = 12)
HAND_SORTED = [0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]


@pytest.fixture(scope="module")
def hand_spec() -> ModelSpec:
    return spec_of(HAND_TEXT, image_size=4)


# --- 2. threshold -------------------------------------------------------------------------------

@pytest.mark.parametrize("percent,index", [(0.0, 0), (0.1, 1), (0.25, 3), (0.3, 3), (0.5, 6), (0.75, 9),
                                           (0.99, 11)])
def test_threshold_is_sorted_pool_value_at_int_n_percent(hand_spec, percent, index):
    assert index == int(12 * Fraction(str(percent)))  # the table itself is int(N·p)
    result = plan(hand_spec, HAND, percent)
    assert result.threshold == pytest.approx(HAND_SORTED[index])
    for layer, g in HAND.items():  # kept iff |γ| >= thr, or the argmax of a layer with none
        np.testing.assert_array_equal(result.kept[layer], np.flatnonzero(own_mask(g, HAND_SORTED[index])))


def test_hand_plan_at_half(hand_spec):
    result = plan(hand_spec, HAND, 0.5)  # thr = sorted[6] = 0.4
    assert result.threshold == pytest.approx(0.4)
    assert {i: list(k) for i, k in result.kept.items()} == {0: [0, 1], 1: [1], 2: [0, 1, 2, 3]}
    assert result.widths_before == [4, 4, 4] and result.widths_after == [2, 1, 4]
    assert result.emptied == [1] and not result.safe
    assert result.channels_before == 12 and result.channels_after == 7
    # params by hand: conv W + 2·BN per output (bias=0); head: 3x3 convs to 4·3 and 4·4 outputs with bias
    params = (3 * 2 + 2 * 2) + (2 * 1 + 2 * 1) + (1 * 4 + 2 * 4) + (4 * 12 * 9 + 12) + (4 * 16 * 9 + 16)
    assert result.params_after == params


def test_layer_scaled_plan_by_hand(hand_spec):
    """PRUNE.GAMMA_SCALE layer: each |γ| over its layer's largest (0.9, 0.3, 0.7), then the same global rule."""
    scaled = scale_gammas(HAND, "layer")
    by_hand = {0: [1, 8 / 9, 1 / 9, 0.05 / 0.9], 1: [2 / 3, 1, 1 / 30, 2 / 30], 2: [1, 6 / 7, 5 / 7, 4 / 7]}
    for layer, values in by_hand.items():
        np.testing.assert_allclose(scaled[layer], values)
    result = plan(hand_spec, scaled, 0.5)  # sorted pool: 1/30 .0556 1/15 1/9 4/7 2/3 [5/7] 6/7 8/9 1 1 1
    assert result.threshold == pytest.approx(5 / 7)
    assert {i: list(k) for i, k in result.kept.items()} == {0: [0, 1], 1: [1], 2: [0, 1, 2]}
    assert result.safe and result.highest_safe == pytest.approx(9 / 12)  # every layer's largest is 1


def test_layer_scale_ignores_a_layer_whose_gammas_shrank_together(hand_spec):
    """A layer's γ all × 0.01 (what an L1 penalty does when the next BatchNorm undoes the scale): the global
    ranking empties it, the layer-scaled ranking keeps the plan it had."""
    shrunk = {**HAND, 1: HAND[1] * 0.01}
    assert plan(hand_spec, shrunk, 0.5).emptied == [1]
    before, after = plan(hand_spec, scale_gammas(HAND, "layer"), 0.5), plan(hand_spec, scale_gammas(shrunk, "layer"), 0.5)
    assert {i: list(k) for i, k in after.kept.items()} == {i: list(k) for i, k in before.kept.items()}
    assert scale_gammas(HAND, "global") is HAND


@pytest.mark.parametrize("share", [0.99, 0.75, 0.5, 0.3])  # k = 1, 5, 7, 8
def test_budget_plan_is_the_smallest_percent_within_the_macs_share(hand_spec, share):
    """Against a walk over every distinct threshold k/12 of the hand example (layer-scaled, safe up to 9/12)."""
    gammas = scale_gammas(HAND, "layer")
    walk = [plan(hand_spec, gammas, k / 12) for k in range(10)]
    first = next(p for p in walk if p.macs_after <= share * p.macs_before)
    result = budget_plan(hand_spec, gammas, share)
    assert result.safe and result.macs_after <= share * result.macs_before and result.percent == first.percent
    assert {i: list(k) for i, k in result.kept.items()} == {i: list(k) for i, k in first.kept.items()}


def test_a_budget_out_of_reach_gives_the_highest_safe_plan(hand_spec):
    gammas = scale_gammas(HAND, "layer")
    result = budget_plan(hand_spec, gammas, 0.01)
    assert result.safe and result.percent == pytest.approx(9 / 12)
    for share in (0.0, 1.0):
        with pytest.raises(PruneError, match="outside \\(0, 1\\); give the share of the MACs to keep"):
            budget_plan(hand_spec, gammas, share)


# Two head levels: emptying layer 2 past the safe ratio 3/12 drops level 1; emptying layer 1 (k >= 10) leaves none.
TWO_LEVELS = {0: np.array([0.9, 0.8, 0.1, 0.05]), 1: np.array([0.7, 0.6, 0.5, 0.4]),
              2: np.array([0.02, 0.03, 0.01, 0.04])}


@pytest.mark.parametrize("share", [0.9, 0.5, 0.2, 0.05, 0.001])
def test_a_budget_with_drop_levels_searches_past_the_safe_ratio(share):
    """Against a walk over every k/12 whose --max plan exists; without drop_levels it stops at the safe 3/12."""
    spec = spec_of(conv(4) + conv(4, level=0) + conv(4, level=1), image_size=4, boxes=(4, 4))
    walk = []
    for k in range(12):
        try:
            walk.append(plan(spec, TWO_LEVELS, k / 12, drop_levels=True))
        except PruneError:
            break
    assert len(walk) == 10 and walk[4].levels == 1  # k = 4 empties layer 2
    expected = next((p for p in walk if p.macs_after <= share * p.macs_before), walk[-1])
    result = budget_plan(spec, TWO_LEVELS, share, drop_levels=True)
    assert (result.percent, result.levels, result.macs_after) == (expected.percent, expected.levels,
                                                                   expected.macs_after)
    assert budget_plan(spec, TWO_LEVELS, share).percent <= 3 / 12


def test_an_unknown_gamma_scale_names_the_key():
    with pytest.raises(ConfigError, match=r"PRUNE.GAMMA_SCALE = 'max' is unknown; use one of global, layer"):
        scale_gammas(HAND, "max")


@pytest.mark.parametrize("n", [1, 7, 10, 12, 100, 720, 11584])
def test_threshold_index_is_int_n_percent(n):
    for percent in (0.0, 0.07, 0.1, 0.29, 0.3, 0.5, 0.57, 0.7, 0.9, 0.999):
        assert threshold_index(n, percent) == floor_index(n, percent), (n, percent)


# --- 1 + 3. kept ratio and the min-1 rule -------------------------------------------------------

@pytest.mark.parametrize("recipe,mode", [("course/plain_shapes.yaml", "normal"),
                                         ("vgg_bn_ssd300_voc0712.yaml", "normal"),
                                         ("mobile_v2_ssd_voc0712.yaml", "normal"),
                                         ("course/residual_shapes.yaml", "normal")])
@pytest.mark.parametrize("percent", [0.1, 0.3, 0.5, 0.7, 0.9, 0.97])
def test_kept_ratio_matches_percent(recipe, mode, percent):
    _, spec = shipped(recipe)
    gammas = random_gammas(spec.layers, seed=1)
    producers = prunable_layers(spec.layers, mode)
    pool = pool_of(producers, gammas)
    n = len(pool)
    thr = pool[floor_index(n, percent)]
    result = plan(spec, gammas, percent, mode)
    assert result.threshold == thr
    forced = [i for i in producers if np.abs(gammas[i]).max() < thr]
    expected = sum(int(own_mask(gammas[i], thr).sum()) for i in producers)
    assert result.channels_before == n
    assert result.channels_after == expected
    ratio = result.channels_after / n
    assert abs(ratio - (1 - percent)) <= (1 + len(forced)) / n, (ratio, 1 - percent, forced)
    for i in producers:  # the exact kept set of every layer
        np.testing.assert_array_equal(result.kept[i], np.flatnonzero(own_mask(gammas[i], thr)))
    assert sorted(result.emptied) == forced  # normal groups: one producer each


def test_min_one_rule_keeps_only_the_argmax(hand_spec):
    result = plan(hand_spec, HAND, 0.5)  # layer 1's largest |γ| (0.3, at index 1, negative) < thr 0.4
    assert list(result.kept[1]) == [1]
    assert result.emptied == [1]
    # a random layer scaled far below everything else, at a percent that empties it
    _, spec = shipped("course/plain_shapes.yaml")
    gammas = random_gammas(spec.layers, seed=2)
    gammas[7] = gammas[7] * 1e-4
    result = plan(spec, gammas, 0.6)
    assert np.abs(gammas[7]).max() < result.threshold
    assert list(result.kept[7]) == [int(np.argmax(np.abs(gammas[7])))]
    assert result.widths_after[7] == 1 and result.emptied == [7]


# --- 4. highest safe ratio ----------------------------------------------------------------------

def test_highest_safe_hand_example(hand_spec):
    result = plan(hand_spec, HAND, 0.1)
    assert result.highest_safe == pytest.approx(5 / 12)  # weakest layer max 0.3 has rank 5 of 12
    at = plan(hand_spec, HAND, 5 / 12)
    assert at.threshold == pytest.approx(0.3) and at.emptied == [] and at.safe
    assert list(at.kept[1]) == [1]  # kept on its own merit, not by the min-1 rule
    above = plan(hand_spec, HAND, 6 / 12)
    assert above.threshold == pytest.approx(0.4) and above.emptied == [1] and not above.safe


def group_emptied(groups, gammas, thr) -> list[int]:
    """First producer of every group whose producers all fall below thr (independent of PrunePlan)."""
    return sorted(min(g.producers) for g in groups if max(np.abs(gammas[i]).max() for i in g.producers) < thr)


@pytest.mark.parametrize("recipe,mode", [("course/plain_shapes.yaml", "normal"),
                                         ("course/residual_shapes.yaml", "normal"),
                                         ("course/residual_shapes.yaml", "shortcut"),
                                         ("mobile_v2_ssd_voc0712.yaml", "normal"),
                                         ("mobile_v2_ssd_voc0712.yaml", "shortcut"),
                                         ("mobile_v2_ssd_voc0712.yaml", "coupled"),
                                         ("vgg_bn_ssd300_voc0712.yaml", "normal")])
def test_highest_safe_is_the_edge(recipe, mode):
    _, spec = shipped(recipe)
    gammas = random_gammas(spec.layers, seed=3)
    groups = prunable_groups(spec.layers, mode)
    pool = pool_of([i for g in groups for i in g.producers], gammas)
    n = len(pool)
    weakest = min(max(np.abs(gammas[i]).max() for i in g.producers) for g in groups)
    safe = int((pool < weakest).sum()) / n
    assert plan(spec, gammas, 0.2, mode).highest_safe == pytest.approx(safe)
    at = plan(spec, gammas, safe, mode)
    assert group_emptied(groups, gammas, at.threshold) == []
    assert at.emptied == [] and at.safe
    above = plan(spec, gammas, safe + 1 / n + 1e-12, mode)
    assert group_emptied(groups, gammas, above.threshold) != []
    assert above.emptied == group_emptied(groups, gammas, above.threshold) and not above.safe


def test_highest_safe_counts_a_shortcut_chain_as_one_group():
    """A chain producer with only tiny γ does not make the plan unsafe: the chain's union keeps channels."""
    text = conv(8) + conv(8, act="linear") + shortcut(-2) + conv(4, level=0)
    spec = spec_of(text, image_size=4)
    gammas = {0: np.array([0.3, 0.4, 0.45, 0.55, 0.65, 0.85, 0.9, 1.0]), 1: np.full(8, 1e-3),
              3: np.array([0.5, 0.6, 0.7, 0.8])}
    gammas[1][5] = 2e-3  # the argmax of the tiny producer
    result = plan(spec, gammas, 0.0, "shortcut")
    # groups {0,1,2} (max 1.0) and {3} (max 0.8): below 0.8 are 8 tiny + 5 of layer 0 + 3 of layer 3 = 16 of 20
    assert result.highest_safe == pytest.approx(16 / 20)
    at = plan(spec, gammas, 16 / 20, "shortcut")
    assert at.threshold == pytest.approx(0.8) and list(at.kept[3]) == [3]
    assert at.safe and at.emptied == []
    # union: layer 0 keeps 0.8, 0.9, 1.0 (channels 5, 6, 7); layer 1 forces its argmax 5 -> same set
    assert [list(at.kept[i]) for i in (0, 1, 2)] == [[5, 6, 7]] * 3


# --- 5. regular (round up to a multiple of round_to) --------------------------------------------

@pytest.mark.parametrize("recipe,mode", [("course/plain_shapes.yaml", "normal"),
                                         ("mobile_v2_ssd_voc0712.yaml", "normal"),
                                         ("mobile_v2_ssd_voc0712.yaml", "coupled"),
                                         ("course/residual_shapes.yaml", "shortcut")])
@pytest.mark.parametrize("round_to", [8, 16])
@pytest.mark.parametrize("percent", [0.3, 0.6, 0.85])
def test_regular_rounds_up_to_multiples(recipe, mode, round_to, percent):
    _, spec = shipped(recipe)
    gammas = random_gammas(spec.layers, seed=4)
    loose = plan(spec, gammas, percent, mode)
    tight = plan(spec, gammas, percent, mode, regular=True, round_to=round_to)
    assert tight.threshold == loose.threshold and set(tight.kept) == set(loose.kept)
    for g in prunable_groups(spec.layers, mode):
        n, kept = len(loose.kept[g.members[0]]), tight.kept[g.members[0]]
        r = len(kept)
        assert r == min(g.width, math.ceil(n / round_to) * round_to), (g.members, n, r)
        assert n <= r <= g.width and (r % round_to == 0 or r == g.width)
        score = np.max([np.abs(gammas[i]) for i in g.producers], axis=0)
        dropped = np.setdiff1d(np.arange(g.width), kept)
        added = np.setdiff1d(kept, loose.kept[g.members[0]])
        if len(dropped) and len(added):  # the rounding adds the next-largest |γ|
            assert score[added].min() >= score[dropped].max()
        assert set(np.flatnonzero(score >= loose.threshold)) <= set(kept)  # every channel above thr stays
        assert set(loose.kept[g.members[0]]) <= set(kept)  # the unrounded set (min-1 channels included) stays
        for i in g.members:  # the whole group shares the mask
            np.testing.assert_array_equal(tight.kept[i], kept)


def width96(high: int) -> tuple[ModelSpec, dict]:
    """A 96-wide conv with `high` channels of |γ| in [0.5, 1] and the rest in [0.01, 0.02], shuffled."""
    rng = np.random.default_rng(5)
    g = np.concatenate([np.linspace(0.5, 1.0, high), np.linspace(0.01, 0.02, 96 - high)])
    return (spec_of(conv(96, size=3, pad=1) + conv(8, level=0), image_size=8),
            {0: rng.permutation(g), 1: np.linspace(0.6, 0.9, 8)})


@pytest.mark.parametrize("high,round_to,expected", [(81, 8, 88), (81, 16, 96), (89, 8, 96), (80, 16, 80),
                                                    (65, 16, 80), (81, 1, 81), (81, 100, 96)])
def test_regular_width_96(high, round_to, expected):
    """The seed rounded to powers of two (81 -> 128 > 96) and broke; ssdlab rounds to multiples."""
    spec, gammas = width96(high)
    percent = (96 - high) / 104 + 1e-6  # threshold = the smallest high value
    loose = plan(spec, gammas, percent)
    assert len(loose.kept[0]) == high and len(loose.kept[1]) == 8
    tight = plan(spec, gammas, percent, regular=True, round_to=round_to)
    assert len(tight.kept[0]) == expected and tight.widths_after[0] == expected
    order = np.argsort(-gammas[0], kind="stable")
    assert set(tight.kept[0]) == set(order[:expected])
    assert len(tight.kept[1]) == 8


def test_regular_mobilenet_1280_layer():
    _, spec = shipped("mobile_v2_ssd_voc0712.yaml")
    gammas = random_gammas(spec.layers, seed=6)
    for percent in (0.2, 0.5, 0.8):
        loose = plan(spec, gammas, percent)
        tight = plan(spec, gammas, percent, regular=True)
        n = len(loose.kept[61])
        assert spec.layers[61]["filters"] == 1280
        assert len(tight.kept[61]) == min(1280, -(-n // 8) * 8)


# --- 6. union masks across residual chains ------------------------------------------------------

RESIDUAL_CHAINS = [[3, 4, 6, 7, 8], [9, 11, 12, 13, 15, 16]]  # from course_residual.cfg (maxpools pass through)


def test_course_residual_groups():
    layers = read_cfg(CONFIGS / "backbones" / "course_residual.cfg")
    groups = channel_groups(layers)
    chains = [g for g in groups if g.kind == "shortcut"]
    assert [g.members for g in chains] == RESIDUAL_CHAINS
    assert [g.producers for g in chains] == [[i for i in c if layers[i]["type"] == "convolutional"]
                                             for c in RESIDUAL_CHAINS]
    assert prunable_layers(layers, "normal") == [0, 1, 5, 10, 14, 17, 18]
    assert prunable_layers(layers, "shortcut") == sorted([0, 1, 5, 10, 14, 17, 18, 3, 6, 9, 11, 15])
    assert prunable_layers(layers, "coupled") == prunable_layers(layers, "shortcut")  # no depthwise convs


@pytest.mark.parametrize("percent", [0.3, 0.6, 0.9])
def test_union_masks_course_residual(percent):
    _, spec = shipped("course/residual_shapes.yaml")
    gammas = random_gammas(spec.layers, seed=7)
    result = plan(spec, gammas, percent, "shortcut")
    for chain in RESIDUAL_CHAINS:
        producers = [i for i in chain if spec.layers[i]["type"] == "convolutional"]
        union = np.zeros(spec.layers[chain[0]]["filters"], dtype=bool)
        for i in producers:
            union |= own_mask(gammas[i], result.threshold)
        for i in chain:
            np.testing.assert_array_equal(result.kept[i], np.flatnonzero(union), err_msg=f"layer {i}")
        assert result.widths_after[chain[-1]] == int(union.sum())  # the merged count goes into the cfg
    # the union can keep more than each producer's own mask would
    assert any(len(result.kept[c[0]]) > own_mask(gammas[c[0]], result.threshold).sum() for c in RESIDUAL_CHAINS)


def test_union_masks_mobilenet_shortcut_groups():
    _, spec = shipped("mobile_v2_ssd_voc0712.yaml")
    gammas = random_gammas(spec.layers, seed=8)
    result = plan(spec, gammas, 0.5, "shortcut")
    chains = [g for g in prunable_groups(spec.layers, "shortcut") if g.kind == "shortcut"]
    assert [g.members for g in chains][:2] == [[5, 8, 9], [12, 15, 16, 19, 20]]
    for g in chains:
        union = np.logical_or.reduce([own_mask(gammas[i], result.threshold) for i in g.producers])
        for i in g.members:
            np.testing.assert_array_equal(result.kept[i], np.flatnonzero(union))


# --- 7. modes on MobileNetV2 --------------------------------------------------------------------

def test_mobilenet_modes():
    _, spec = shipped("mobile_v2_ssd_voc0712.yaml")
    layers = spec.layers
    counts = {mode: prunable_layers(layers, mode) for mode in MODES}
    assert counts["normal"] == [2, 60, 61, 64, 67, 70, 73]  # REFERENCE §4.2: the seed's 7 layers
    assert set(counts["normal"]) < set(counts["shortcut"]) < set(counts["coupled"])
    widths = infer_channels(layers)
    channels = {mode: sum(widths[i] for i in counts[mode]) for mode in MODES}
    assert channels["normal"] == 16 + 320 + 1280 + 512 + 256 + 256 + 64
    assert channels["coupled"] >= 4 * channels["normal"], (
        f"prunable channels normal {channels['normal']}, shortcut {channels['shortcut']}, "
        f"coupled {channels['coupled']} ({channels['coupled'] / channels['normal']:.2f}x)")
    # every expand conv + depthwise pair is one coupled group; depthwise layers are never producers
    depthwise = [i for i, layer in enumerate(layers) if layer["type"] == "depthwise"]
    assert len(depthwise) == 21 and not set(depthwise) & set(counts["coupled"])
    coupled = [g for g in prunable_groups(layers, "coupled") if g.kind == "coupled"]
    assert sorted(d for g in coupled for d in g.depthwise) == depthwise
    assert all(g.producers == [g.depthwise[0] - 1] for g in coupled)


@pytest.mark.parametrize("regular", [False, True])
def test_coupled_depthwise_follows_expand_conv(regular):
    _, spec = shipped("mobile_v2_ssd_voc0712.yaml")
    gammas = random_gammas(spec.layers, seed=9)
    result = plan(spec, gammas, 0.5, "coupled", regular=regular)
    depthwise = [i for i, layer in enumerate(spec.layers) if layer["type"] == "depthwise"]
    for d in depthwise:
        assert spec.layers[d - 1]["type"] == "convolutional"
        np.testing.assert_array_equal(result.kept[d], result.kept[d - 1])
        if not regular:  # decided by the expand conv's γ alone (the depthwise γ are ignored)
            np.testing.assert_array_equal(result.kept[d - 1], np.flatnonzero(own_mask(gammas[d - 1],
                                                                                      result.threshold)))
    assert any(len(result.kept[d]) < spec.layers[d]["filters"] for d in depthwise)
    # the depthwise γ are not in the pool: changing them changes nothing
    changed = {i: (g * 100 if i in depthwise else g) for i, g in gammas.items()}
    other = plan(spec, changed, 0.5, "coupled", regular=regular)
    assert other.threshold == result.threshold
    assert all(np.array_equal(other.kept[i], result.kept[i]) for i in result.kept)


# --- 8. blocked groups: L2Norm, no BatchNorm, the input image -----------------------------------

def test_l2norm_layer_never_prunable():
    layers = read_cfg(CONFIGS / "backbones" / "vgg_bn_ssd300.cfg")
    assert layers[12]["feature"] == "l2_norm"
    blocked = [g for g in channel_groups(layers) if 12 in g.members]
    assert len(blocked) == 1 and blocked[0].members == [12, 13] and "L2Norm" in blocked[0].blocked
    for mode in MODES:
        assert 12 not in prunable_layers(layers, mode)
        assert prunable_layers(layers, mode) == [i for i, layer in enumerate(layers)
                                                 if layer["type"] == "convolutional" and i != 12]
    _, spec = shipped("vgg_bn_ssd300_voc0712.yaml")
    gammas = random_gammas(spec.layers, seed=10)
    result = plan(spec, gammas, 0.7)
    assert 12 not in result.kept and 13 not in result.kept
    assert result.widths_after[12] == 512 and len(result.kept_out(12)) == 512
    # the FPGA variant has no L2Norm: layer 12 is an ordinary prunable layer there
    assert 12 in prunable_layers(read_cfg(CONFIGS / "backbones" / "vgg_bn_ssd300_fpga.cfg"), "normal")


def test_groups_with_a_conv_without_bn_are_blocked():
    text = (conv(8) + conv(8, bn=0, bias=1) + conv(8) + conv(8, bn=0, bias=1, act="linear") + shortcut(-2)
            + conv(8) + conv(8, act="linear") + shortcut(-2) + conv(4, level=0))
    layers = parse_cfg(text)
    groups = {tuple(g.members): g for g in channel_groups(layers)}
    assert "BatchNorm" in groups[(1,)].blocked
    assert "BatchNorm" in groups[(2, 3, 4)].blocked  # one producer of the chain lacks BN: the chain is blocked
    assert groups[(5, 6, 7)].blocked == "" and groups[(5, 6, 7)].kind == "shortcut"
    assert prunable_layers(layers, "normal") == [0, 8]
    assert prunable_layers(layers, "shortcut") == [0, 5, 6, 8]
    gammas = random_gammas(layers, seed=11)
    assert 1 not in gammas and 3 not in gammas  # no BN, no γ: the plan must not ask for them
    result = plan(spec_of(text), gammas, 0.5, "shortcut")
    assert not {1, 2, 3, 4} & set(result.kept)


def test_group_carrying_the_image_is_blocked():
    layers = parse_cfg(maxpool() + conv(8) + conv(4, level=0))
    image = [g for g in channel_groups(layers) if 0 in g.members]
    assert image[0].members == [0] and "image" in image[0].blocked
    assert prunable_layers(layers, "coupled") == [1, 2]


def test_group_kinds_and_widths():
    text = (conv(8) + maxpool() + conv(16) + conv(16, kind="depthwise", size=3, pad=1) + conv(8, act="linear")
            + conv(8, act="linear") + shortcut(-2) + maxpool() + conv(4, level=0))
    groups = channel_groups(parse_cfg(text))
    assert [(g.members, g.producers, g.depthwise, g.kind, g.width) for g in groups] == [
        ([0, 1], [0], [], "normal", 8), ([2, 3], [2], [3], "coupled", 16),
        ([4, 5, 6, 7], [4, 5], [], "shortcut", 8), ([8], [8], [], "normal", 4)]


# --- 9. params and MACs against the profiler ----------------------------------------------------

def meta_model(cfg, cfg_text: str | None = None) -> SSD:
    """A model on the meta device: shapes only (the profiler counts FLOPs from shapes)."""
    with torch.device("meta"):
        return (SSD(cfg, cfg_text=cfg_text) if cfg_text else build_model(cfg)).eval()


@pytest.mark.parametrize("recipe", SHIPPED)
def test_params_and_macs_match_the_profiler(recipe):
    cfg, spec = shipped(recipe)
    model = meta_model(cfg)
    gammas = random_gammas(spec.layers, seed=12)
    size = cfg.INPUT.IMAGE_SIZE
    params, macs = count_params(model), count_macs(model, size)
    for mode, regular, percent in (("normal", False, 0.5), ("coupled", True, 0.7)):
        result = plan(spec, gammas, percent, mode, regular=regular)
        assert (result.params_before, result.macs_before) == (params, macs)
        layers = compact_layers(model, result)
        small = meta_model(compact_config(model, result, layers), write_cfg(layers))
        assert result.params_after == count_params(small) < params
        assert result.macs_after == count_macs(small, size) < macs
        assert result.compression() == pytest.approx(1 - count_params(small) / params)


def test_spatial_sizes_match_the_backbone():
    for recipe in ("vgg_bn_ssd300_voc0712.yaml", "course/plain_shapes.yaml"):
        cfg, spec = shipped(recipe)
        model = meta_model(cfg)
        x = torch.empty(1, 3, cfg.INPUT.IMAGE_SIZE, cfg.INPUT.IMAGE_SIZE, device="meta")
        sizes = []
        kept = {}
        for i, module in enumerate(model.backbone.module_list):
            x = module(x, kept[module.source]) if hasattr(module, "source") else module(x)
            kept[i] = x
            sizes.append(x.shape[-1])
        assert spatial_sizes(spec.layers, cfg.INPUT.IMAGE_SIZE) == sizes


# --- 10. speed ----------------------------------------------------------------------------------

def test_plan_is_fast_on_vgg16_ssd300():
    _, spec = shipped("vgg_bn_ssd300_voc0712.yaml")
    gammas = random_gammas(spec.layers, seed=13)
    times = []
    for _ in range(7):
        start = time.perf_counter()
        plan(spec, gammas, 0.5, "normal", regular=True)
        times.append(time.perf_counter() - start)
    assert statistics.median(times) < 0.1, times


# --- 11. bad input ------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,word", [({"percent": -0.1}, "percent"), ({"percent": 1.0}, "percent"),
                                         ({"percent": 1.5}, "percent"), ({"mode": "channel"}, "unknown"),
                                         ({"round_to": 0}, "ROUND_TO")])
def test_bad_arguments(hand_spec, kwargs, word):
    args = {"percent": 0.5, **kwargs}
    with pytest.raises(PruneError, match=word):
        plan(hand_spec, HAND, **args)


def test_unknown_mode_everywhere():
    layers = parse_cfg(HAND_TEXT)
    for function in (prunable_groups, prunable_layers):
        with pytest.raises(PruneError, match="normal, shortcut, coupled"):
            function(layers, "slim")


def test_missing_or_wrong_gammas(hand_spec):
    with pytest.raises(PruneError, match="no BN γ given for prunable layer 1"):
        plan(hand_spec, {0: HAND[0], 2: HAND[2]}, 0.5)
    with pytest.raises(PruneError, match="4 channels but 3"):
        plan(hand_spec, {**HAND, 2: HAND[2][:3]}, 0.5)


def test_nothing_prunable():
    spec = spec_of(conv(8, bn=0, bias=1) + conv(4, bn=0, bias=1, level=0))
    with pytest.raises(PruneError, match="no channels prunable"):
        plan(spec, {}, 0.5)


def test_drop_levels_emptying_before_the_first_level(hand_spec):
    with pytest.raises(PruneError, match="no head level would remain"):
        plan(hand_spec, HAND, 0.5, drop_levels=True)  # empties layer 1, before the only level (layer 2)
    assert plan(hand_spec, HAND, 5 / 12, drop_levels=True).levels == 1  # at the safe ratio nothing drops


# --- 12. --max: drop the head levels after an emptied layer --------------------------------------

PLAIN_FEATURES = [3, 5, 8, 10, 11, 12]  # course_plain.cfg


@pytest.mark.parametrize("weak,levels,cut", [(7, 2, 5), (8, 2, 5), (10, 3, 8), (12, 5, 11), (5, 1, 3)])
def test_drop_levels_course_plain(weak, levels, cut):
    cfg, spec = shipped("course/plain_shapes.yaml")
    assert feature_layers(spec.layers) == PLAIN_FEATURES
    gammas = random_gammas(spec.layers, seed=14)
    gammas[weak] = gammas[weak] * 1e-3
    n = sum(gammas[i].size for i in prunable_layers(spec.layers, "normal"))
    safe = plan(spec, gammas, 0.0).highest_safe
    assert safe == pytest.approx((pool_of(list(gammas), gammas) < np.abs(gammas[weak]).max()).sum() / n)
    percent = safe + 1 / n + 1e-9
    full = plan(spec, gammas, percent)
    assert full.emptied == [weak] and (full.levels, full.cut) == (6, 12)
    result = plan(spec, gammas, percent, drop_levels=True)
    assert (result.levels, result.cut) == (levels, cut)
    assert result.cut == PLAIN_FEATURES[levels - 1]
    assert len(result.widths_after) == cut + 1 and max(result.kept) <= cut
    for i in result.kept:  # the kept layers are pruned exactly as without the cut
        np.testing.assert_array_equal(result.kept[i], full.kept[i])
    # the compact cfg ends at the last kept head level; its cost is the profiler's
    model = meta_model(cfg)
    layers = compact_layers(model, result)
    assert len(layers) == cut + 1 and layers[-1]["feature_idx"] == levels - 1
    small_cfg = compact_config(model, result, layers)
    assert list(small_cfg.MODEL.PRIORS.FEATURE_MAPS) == [32, 16, 8, 4, 2, 1][:levels]
    small = meta_model(small_cfg, write_cfg(layers))
    assert result.params_after == count_params(small)
    assert result.macs_after == count_macs(small, cfg.INPUT.IMAGE_SIZE)
    # below the safe ratio --max changes nothing
    low = plan(spec, gammas, safe, drop_levels=True)
    assert (low.levels, low.cut) == (6, 12)


def test_drop_levels_vgg_and_shortcut_chain():
    _, spec = shipped("vgg_bn_ssd300_voc0712.yaml")
    gammas = random_gammas(spec.layers, seed=15)
    gammas[22] = gammas[22] * 1e-3  # after head levels 12, 19, 21
    safe = plan(spec, gammas, 0.0).highest_safe
    n = sum(gammas[i].size for i in prunable_layers(spec.layers, "normal"))
    result = plan(spec, gammas, safe + 1 / n + 1e-9, drop_levels=True)
    assert (result.levels, result.cut) == (3, 21)
    # residual: an emptied chain cuts before its first producer
    _, spec = shipped("course/residual_shapes.yaml")
    gammas = random_gammas(spec.layers, seed=16)
    for i in (9, 11, 15):  # the chain [9, 11, 12, 13, 15, 16]; head levels 2 and 3 are layers 12 and 16
        gammas[i] = gammas[i] * 1e-3
    safe = plan(spec, gammas, 0.0, "shortcut").highest_safe
    n = sum(gammas[i].size for i in prunable_layers(spec.layers, "shortcut"))
    result = plan(spec, gammas, safe + 1 / n + 1e-9, "shortcut", drop_levels=True)
    assert result.emptied == [9] and (result.levels, result.cut) == (2, 7)  # keeps layers 0..7 (levels 0, 1)


def test_model_cost_of_truncated_widths_counts_only_kept_levels(hand_spec):
    widths = [4, 4, 4]
    full = model_cost(hand_spec, widths, 1)
    no_head = model_cost(hand_spec, widths, 0)
    assert full[0] - no_head[0] == 4 * 12 * 9 + 12 + 4 * 16 * 9 + 16
    assert full[1] - no_head[1] == (4 * 12 * 9 + 4 * 16 * 9) * 4 * 4


def test_regular_keeps_a_chain_producers_forced_channel():
    """A shortcut chain producer with every γ below the threshold keeps its argmax, also when rounded."""
    layers = parse_cfg("[convolutional]\nbatch_normalize=1\nfilters=24\nsize=1\nactivation=relu\n"
                       "[convolutional]\nbatch_normalize=1\nfilters=24\nsize=1\nactivation=linear\n"
                       "[shortcut]\nfrom=-2\n"
                       "[convolutional]\nbatch_normalize=1\nfilters=8\nsize=1\nactivation=relu\n"
                       "feature=linear\nfeature_idx=0\n")
    a = np.zeros(24)
    a[:8], a[8:15], a[15], a[16:] = 1, 0.09, 0.01, 0.08
    b = np.full(24, 0.001)
    b[15] = 0.05
    spec = ModelSpec(layers, 8, boxes_per_location=(4,), num_classes=3)
    gammas = {0: a, 1: b, 3: np.linspace(0.5, 1, 8)}
    assert list(plan(spec, gammas, 0.6, "shortcut").kept[0]) == list(range(16))
    assert 15 in plan(spec, gammas, 0.6, "shortcut", regular=True).kept[0]
