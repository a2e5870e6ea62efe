"""Priors: counts of the seed's recipes, hand-computed first boxes, order, clipping, config checks."""
import math

import pytest
import torch

from ssdlab.config import get_default_config
from ssdlab.errors import ConfigError
from ssdlab.model.priors import level_slices, make_priors

# REFERENCE §2 priors tables: (image size, MODEL.PRIORS keys)
TABLES = {
    "vgg300_voc": (300, dict(FEATURE_MAPS=[38, 19, 10, 5, 3, 1], STRIDES=[8, 16, 32, 64, 100, 300],
                             MIN_SIZES=[30, 60, 111, 162, 213, 264], MAX_SIZES=[60, 111, 162, 213, 264, 315],
                             ASPECT_RATIOS=[[2], [2, 3], [2, 3], [2, 3], [2], [2]],
                             BOXES_PER_LOCATION=[4, 6, 6, 6, 4, 4])),
    "ssdlite320": (320, dict(FEATURE_MAPS=[20, 10, 5, 3, 2, 1], STRIDES=[16, 32, 64, 107, 160, 320],
                             MIN_SIZES=[60, 105, 150, 195, 240, 285], MAX_SIZES=[105, 150, 195, 240, 285, 330],
                             ASPECT_RATIOS=[[2, 3]] * 6, BOXES_PER_LOCATION=[6] * 6)),
    "vgg512_voc": (512, dict(FEATURE_MAPS=[64, 32, 16, 8, 4, 2, 1], STRIDES=[8, 16, 32, 64, 128, 256, 512],
                             MIN_SIZES=[35.84, 76.8, 153.6, 230.4, 307.2, 384.0, 460.8],
                             MAX_SIZES=[76.8, 153.6, 230.4, 307.2, 384.0, 460.8, 537.65],
                             ASPECT_RATIOS=[[2], [2, 3], [2, 3], [2, 3], [2, 3], [2], [2]],
                             BOXES_PER_LOCATION=[4, 6, 6, 6, 6, 4, 4])),
}


def priors_cfg(name: str, **changes):
    """MODEL.PRIORS of a default config with one table (and any changes) set; returns (node, image size)."""
    image_size, keys = TABLES[name]
    node = get_default_config().MODEL.PRIORS
    for key, value in {**keys, **changes}.items():
        setattr(node, key, value)
    return node, image_size


@pytest.mark.parametrize("name, count", [("vgg300_voc", 8732), ("ssdlite320", 3234), ("vgg512_voc", 24564)])
def test_prior_counts(name, count):
    node, image_size = priors_cfg(name)
    priors = make_priors(node, image_size)
    assert priors.shape == (count, 4)
    assert priors.dtype == torch.float32
    assert priors.min() >= 0 and priors.max() <= 1


def test_first_priors_of_level_0_by_hand():
    node, image_size = priors_cfg("vgg300_voc")
    priors = make_priors(node, image_size)
    c = 0.5 / 37.5  # scale = 300 / 8
    s2 = math.sqrt(2)
    expected = torch.tensor([
        [c, c, 0.1, 0.1],                                           # square min 30 / 300
        [c, c, math.sqrt(30 * 60) / 300, math.sqrt(30 * 60) / 300],  # square sqrt(min * max)
        [c, c, 0.1 * s2, 0.1 / s2],                                  # ratio 2
        [c, c, 0.1 / s2, 0.1 * s2],                                  # ratio 1/2
    ])
    torch.testing.assert_close(priors[:4], expected)


def test_order_is_level_row_column_box():
    node, image_size = priors_cfg("vgg300_voc")
    priors = make_priors(node, image_size)
    # next column of row 0 (box 0): cx moves, cy stays
    torch.testing.assert_close(priors[4, :2], torch.tensor([1.5 / 37.5, 0.5 / 37.5]))
    # first box of row 1: cx back to the first column, cy moves
    torch.testing.assert_close(priors[38 * 4, :2], torch.tensor([0.5 / 37.5, 1.5 / 37.5]))
    # level 1 starts after 38*38*4 priors: scale 300/16, min size 60, 6 boxes with ratio 3 last
    start = 38 * 38 * 4
    c = 0.5 / (300 / 16)
    torch.testing.assert_close(priors[start, :], torch.tensor([c, c, 0.2, 0.2]))
    s3 = math.sqrt(3)
    torch.testing.assert_close(priors[start + 5, :], torch.tensor([c, c, 0.2 / s3, 0.2 * s3]))
    torch.testing.assert_close(priors[start + 6, :2], torch.tensor([1.5 / (300 / 16), c]))


def test_clip():
    clipped = make_priors(*priors_cfg("vgg300_voc"))
    raw = make_priors(*priors_cfg("vgg300_voc", CLIP=False))
    # last level: one 1x1 cell, min 264: the ratio-2 box is 264*sqrt(2)/300 = 1.2445 wide
    wide = 264 * math.sqrt(2) / 300
    assert raw[-2, 2].item() == pytest.approx(wide, rel=1e-6)
    assert clipped[-2, 2].item() == 1.0
    assert raw.max() > 1 and clipped.max() == 1.0
    torch.testing.assert_close(clipped, raw.clamp(0, 1))


def test_wrong_boxes_per_location_names_key():
    node, image_size = priors_cfg("vgg300_voc", BOXES_PER_LOCATION=[4, 6, 4, 6, 4, 4])
    with pytest.raises(ConfigError, match=r"MODEL\.PRIORS\.BOXES_PER_LOCATION\[2\].*set .* to 6"):
        make_priors(node, image_size)


def test_list_length_mismatch_names_key():
    node, image_size = priors_cfg("vgg300_voc", MIN_SIZES=[30, 60, 111, 162, 213])
    with pytest.raises(ConfigError, match=r"MODEL\.PRIORS\.MIN_SIZES has 5 entries"):
        make_priors(node, image_size)


def test_flat_aspect_ratios_are_refused():
    node, image_size = priors_cfg("vgg300_voc", ASPECT_RATIOS=[2, 3, 3, 3, 2, 2])
    with pytest.raises(ConfigError, match=r"MODEL\.PRIORS\.ASPECT_RATIOS\[0\] = 2 must be a list"):
        make_priors(node, image_size)


def test_level_slices_by_hand():
    node, image_size = priors_cfg("vgg300_voc")
    # 38*38*4 = 5776, 19*19*6 = 2166, 10*10*6 = 600, 5*5*6 = 150, 3*3*4 = 36, 1*1*4 = 4 (sum 8732)
    bounds = [0, 5776, 7942, 8542, 8692, 8728, 8732]
    assert level_slices(node) == [slice(a, b) for a, b in zip(bounds, bounds[1:])]
    priors = make_priors(node, image_size)
    for k, part in enumerate(level_slices(node)):
        level = priors[part]
        # every cell of level k starts with the square of side MIN_SIZES[k] at the cell's centre
        first = level[::node.BOXES_PER_LOCATION[k]]
        assert len(first) == node.FEATURE_MAPS[k] ** 2
        assert torch.allclose(first[:, 2], torch.tensor(min(node.MIN_SIZES[k] / image_size, 1.0)))
        scale = image_size / node.STRIDES[k]
        assert first[0, :2].tolist() == pytest.approx([0.5 / scale, 0.5 / scale])
