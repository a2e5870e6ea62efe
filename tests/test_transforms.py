"""Tests for ssdlab.data.transforms: boxes follow the pixels, randomness is seeded, targets are right."""
from __future__ import annotations

import colorsys

import numpy as np
import pytest
import torch

from ssdlab.config import get_default_config
from ssdlab.data import transforms as T

RED = np.array([250, 10, 10], dtype=np.float32)
GREEN = np.array([10, 250, 10], dtype=np.float32)


def painted_image() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A grey 120x160 image with a red and a green filled box, and their xyxy boxes."""
    image = np.full((120, 160, 3), 60, dtype=np.uint8)
    boxes = np.array([[30, 40, 90, 80], [100, 10, 150, 60]], dtype=np.float32)
    for (x1, y1, x2, y2), colour in zip(boxes.astype(int), (RED, GREEN)):
        image[y1:y2, x1:x2] = colour
    return image, boxes, np.array([1, 2], dtype=np.int64)


def geometric_pipeline(size: int) -> T.Compose:
    """Every geometric step of the training pipeline, without the colour changes."""
    return T.Compose([T.AsArrays(), T.Expand([123, 117, 104]), T.RandomSampleCrop(),
                      T.RandomMirror(), T.ToPercentCoords(), T.Resize(size)])


def colour_mask(image: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """Pixels within 8 levels of colour in every channel."""
    return np.all(np.abs(image - colour) < 8, axis=-1)


@pytest.mark.parametrize("seed", range(12))
def test_boxes_follow_the_painted_pixels(seed):
    image, boxes, labels = painted_image()
    size = 96
    out, out_boxes, out_labels = geometric_pipeline(size)(image, boxes, labels, rng=np.random.default_rng(seed))
    assert out.shape == (size, size, 3)
    assert len(out_boxes) == len(out_labels) >= 1
    assert np.all(out_boxes >= 0) and np.all(out_boxes <= 1)
    covered = np.zeros((size, size), dtype=bool)
    for box, label in zip(out_boxes * size, out_labels):
        colour = RED if label == 1 else GREEN
        x1, y1, x2, y2 = box
        inner = out[int(np.ceil(y1)) + 1:int(y2) - 1, int(np.ceil(x1)) + 1:int(x2) - 1]
        if inner.size:
            assert colour_mask(inner, colour).all()
        if x2 - x1 > 3 and y2 - y1 > 3:  # the coloured pixels span the box, up to the blurred edge
            rows, cols = np.nonzero(colour_mask(out, colour))
            extent = [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]
            assert np.allclose(extent, box, atol=1.5)
        covered[max(int(y1) - 2, 0):int(np.ceil(y2)) + 2, max(int(x1) - 2, 0):int(np.ceil(x2)) + 2] = True
    painted = colour_mask(out, RED) | colour_mask(out, GREEN)
    kept = set(out_labels.tolist())
    if kept == {1, 2}:  # a box dropped by the crop may leave some of its pixels in the patch
        assert painted[~covered].mean() < 0.01


def test_mirror_moves_boxes_with_pixels():
    image, boxes, labels = painted_image()
    out, out_boxes, out_labels = T.RandomMirror(p=1.0)(image, boxes, labels)
    assert np.array_equal(out_boxes[0], [160 - 90, 40, 160 - 30, 80])
    assert colour_mask(out[40:80, 70:130].astype(np.float32), RED).all()
    assert np.array_equal(out_labels, labels)


def test_expand_fills_with_mean_and_shifts_boxes():
    image, boxes, labels = painted_image()
    mean = [123, 117, 104]
    out, out_boxes, _ = T.Expand(mean, p=1.0)(image.astype(np.float32), boxes, labels, rng=np.random.default_rng(3))
    assert out.shape[0] >= 120 and out.shape[1] >= 160
    shift = out_boxes[0, :2] - boxes[0, :2]
    left, top = int(shift[0]), int(shift[1])
    assert np.array_equal(out[top:top + 120, left:left + 160], image)
    border = np.ones(out.shape[:2], dtype=bool)
    border[top:top + 120, left:left + 160] = False
    assert np.all(out[border] == mean)


def test_expand_keeps_a_uint8_image_uint8():
    image, boxes, labels = painted_image()
    out, _, _ = T.Expand([123.4, 117, 104], p=1.0)(image, boxes, labels, rng=np.random.default_rng(3))
    assert out.dtype == np.uint8 and out.shape[0] > 120
    assert np.array_equal(out[0, 0], [123, 117, 104])  # the mean, rounded


def test_training_pipeline_distorts_colours_after_the_resize():
    cfg = get_default_config()
    cfg.INPUT.IMAGE_SIZE = 64
    names = [type(t).__name__ for t in T.build_transforms(cfg, is_train=True).transforms]
    assert names == ["AsArrays", "Expand", "RandomSampleCrop", "RandomMirror", "ToPercentCoords", "Resize",
                     "PhotometricDistort", "SubtractMeans", "ToTensor"]
    image, boxes, labels = painted_image()
    for seed in range(5):  # a uint8 image goes through; the colour step sees size x size float pixels
        tensor, out_boxes, _ = T.build_transforms(cfg, is_train=True)(image, boxes, labels,
                                                                      rng=np.random.default_rng(seed))
        assert tensor.shape == (3, 64, 64) and tensor.dtype == torch.float32
        pixels = tensor + torch.tensor(cfg.INPUT.PIXEL_MEAN).view(3, 1, 1)
        assert pixels.min() >= -1e-3 and pixels.max() <= 255 + 1e-3
        assert np.all((out_boxes >= 0) & (out_boxes <= 1))


def test_zero_area_boxes_are_dropped_with_their_labels():
    image, _, _ = painted_image()
    boxes = np.array([[10, 10, 10, 50], [20, 20, 60, 60], [5, 30, 40, 30]], dtype=np.float32)
    labels = np.array([3, 1, 2])
    for step in (T.RandomMirror(p=1.0), T.Expand([0, 0, 0], p=1.0)):
        _, out_boxes, out_labels = step(image.astype(np.float32), boxes, labels, rng=np.random.default_rng(0))
        assert out_boxes.shape == (1, 4) and out_labels.tolist() == [1]
    _, out_boxes, out_labels = T.ToPercentCoords()(image, boxes, labels)
    assert np.allclose(out_boxes, [[20 / 160, 20 / 120, 60 / 160, 60 / 120]]) and out_labels.tolist() == [1]


def test_crop_modes_by_index_respect_the_min_iou():
    image = np.zeros((120, 160, 3), dtype=np.float32)
    boxes = np.array([[10, 10, 150, 110], [60, 20, 90, 50]], dtype=np.float32)
    labels = np.array([1, 2])
    crop = T.RandomSampleCrop()
    crop.MODES = ((0.9, np.inf),)  # only the strictest mode (reachable through the big box)
    box_area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    for seed in range(20):
        out, out_boxes, out_labels = crop(image, boxes, labels, rng=np.random.default_rng(seed))
        crop_area = out.shape[0] * out.shape[1]
        inter = (out_boxes[:, 2] - out_boxes[:, 0]) * (out_boxes[:, 3] - out_boxes[:, 1])
        iou = inter / (box_area[out_labels - 1] + crop_area - inter)
        assert iou.max() >= 0.9 - 1e-6


def test_crop_default_modes_work_on_this_numpy():
    image, boxes, labels = painted_image()
    sizes = set()
    for seed in range(30):
        out, out_boxes, out_labels = T.RandomSampleCrop()(image, boxes, labels, rng=np.random.default_rng(seed))
        sizes.add(out.shape)
        assert len(out_boxes) == len(out_labels) >= 1
        assert np.all(out_boxes[:, 2:] <= [out.shape[1], out.shape[0]]) and np.all(out_boxes >= 0)
    assert (120, 160, 3) in sizes and len(sizes) > 5  # the None mode and real crops both occur


def test_crop_keeps_images_without_boxes():
    image = np.zeros((20, 30, 3), dtype=np.float32)
    out, out_boxes, out_labels = T.RandomSampleCrop()(image, np.zeros((0, 4), np.float32), np.zeros(0, np.int64))
    assert out.shape == image.shape and out_boxes.shape == (0, 4) and out_labels.shape == (0,)


def test_hsv_round_trip_matches_colorsys():
    pixels = np.random.default_rng(0).uniform(0, 255, (5, 7, 3)).astype(np.float32)
    pixels[0, 0] = 0
    pixels[0, 1] = [255, 0, 0]
    hue, saturation, value = T.rgb_to_hsv(pixels)
    for y, x in [(0, 0), (0, 1), (2, 3), (4, 6)]:
        h, s, v = colorsys.rgb_to_hsv(*(pixels[y, x] / 255))
        assert np.allclose([hue[y, x] / 360, saturation[y, x], value[y, x] / 255], [h, s, v], atol=1e-5)
    assert np.allclose(T.hsv_to_rgb(hue, saturation, value), pixels, atol=1e-3)


def test_photometric_distort_keeps_range_and_boxes():
    image, boxes, labels = painted_image()
    for seed in range(10):
        out, out_boxes, out_labels = T.PhotometricDistort()(image, boxes, labels, rng=np.random.default_rng(seed))
        assert out.dtype == np.float32 and out.shape == image.shape
        assert out.min() >= 0 and out.max() <= 255 + 1e-3
        assert out_boxes is boxes and out_labels is labels


def test_same_seed_same_sample_and_torch_seeding():
    cfg = get_default_config()
    cfg.INPUT.IMAGE_SIZE = 64
    pipeline = T.build_transforms(cfg, is_train=True)
    image, boxes, labels = painted_image()
    first = pipeline(image, boxes, labels, rng=np.random.default_rng(7))
    again = pipeline(image, boxes, labels, rng=np.random.default_rng(7))
    other = pipeline(image, boxes, labels, rng=np.random.default_rng(8))
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])
    torch.manual_seed(3)
    a = pipeline(image, boxes, labels)
    torch.manual_seed(3)
    b = pipeline(image, boxes, labels)
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_pipelines_output_shapes_and_mean():
    cfg = get_default_config()
    cfg.INPUT.IMAGE_SIZE = 48
    image = np.empty((30, 40, 3), dtype=np.uint8)
    image[:] = cfg.INPUT.PIXEL_MEAN
    tensor, boxes, labels = T.build_transforms(cfg, is_train=False)(image, None, None)
    assert tensor.shape == (3, 48, 48) and tensor.dtype == torch.float32
    assert boxes is None and labels is None
    assert torch.allclose(tensor, torch.zeros_like(tensor), atol=1e-4)
    cfg.SOLVER.AUGMENT = False
    plain = T.build_transforms(cfg, is_train=True)
    assert [type(t).__name__ for t in plain.transforms] == [
        "AsArrays", "ToPercentCoords", "Resize", "SubtractMeans", "ToTensor"]
    _, boxes, _ = plain(image, np.array([[4, 3, 20, 15]]), np.array([1]))
    assert np.allclose(boxes, [[0.1, 0.1, 0.5, 0.5]])


def small_priors_cfg():
    """A one-level config: 64 px input, 8x8 cells, 4 priors each (256 priors)."""
    cfg = get_default_config()
    cfg.INPUT.IMAGE_SIZE = 64
    priors = cfg.MODEL.PRIORS
    priors.FEATURE_MAPS, priors.STRIDES = [8], [8]
    priors.MIN_SIZES, priors.MAX_SIZES = [16], [32]
    priors.ASPECT_RATIOS, priors.BOXES_PER_LOCATION = [[2]], [4]
    return cfg


def test_target_transform_shapes_and_exact_prior_match():
    cfg = small_priors_cfg()
    target = T.build_target_transform(cfg)
    priors = target.priors
    assert priors.shape == (256, 4)
    k = 4 * (3 * 8 + 5) + 1  # row 3, column 5, second box (the sqrt(16*32) square)
    cx, cy, w, h = priors[k].tolist()
    box = np.array([[cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]], dtype=np.float32)
    encoded, labels = target(box, np.array([2]))
    assert encoded.shape == (256, 4) and encoded.dtype == torch.float32
    assert labels.shape == (256,) and labels.dtype == torch.long
    assert labels[k] == 2
    assert torch.allclose(encoded[k], torch.zeros(4), atol=1e-5)
    encoded, labels = target(np.zeros((0, 4), np.float32), np.zeros(0, np.int64))
    assert encoded.shape == (256, 4) and torch.all(labels == 0) and torch.isfinite(encoded).all()


def test_course_switches_leave_out_zoom_out_and_crop():
    from ssdlab.config import load_config
    from ssdlab.data.transforms import Expand, PhotometricDistort, RandomSampleCrop, build_transforms

    full = build_transforms(load_config(None), is_train=True)
    light = build_transforms(load_config(None, ["INPUT.EXPAND_MAX_RATIO", "1.0", "INPUT.CROP", "False"]), True)
    none = build_transforms(load_config(None, ["SOLVER.AUGMENT", "False"]), True)

    def kinds(pipeline):
        return {type(t) for t in pipeline.transforms}

    assert {Expand, RandomSampleCrop} <= kinds(full)
    assert not {Expand, RandomSampleCrop} & kinds(light) and len(kinds(light)) == len(kinds(full)) - 2
    assert len(kinds(none)) == len(kinds(light)) - 2
    grey = build_transforms(load_config(None, ["INPUT.PHOTOMETRIC", "False"]), True)
    assert kinds(full) - kinds(grey) == {PhotometricDistort}
