"""Data augmentation and input preparation for SSD (the SSD paper's recipe, as in lufficc/SSD).

Every transform is a small class called as ``image, boxes, labels = t(image, boxes, labels)``:
``image`` is an HxWx3 RGB numpy array (uint8 or float32), ``boxes`` a float32 [K, 4] xyxy array
(pixels until ``ToPercentCoords``, then [0, 1]) and ``labels`` an int64 [K] array. Geometric steps
drop boxes that end up with zero area, together with their labels. At test time ``boxes`` and
``labels`` may be None.

Randomness: random transforms (subclasses of ``RandomTransform``) take an optional
``rng: np.random.Generator`` keyword, and ``Compose`` hands its ``rng`` to each of them, so one
per-sample Generator (e.g. seeded from (seed, iteration, slot) by the loader) fixes the whole
augmentation. Without one, a transform makes a fresh Generator seeded from torch's global RNG
(``torch_seeded_rng``): ``seed_everything`` seeds that RNG in the main process and a DataLoader
seeds it in every worker with ``base_seed + worker_id``, so workers still get distinct,
reproducible streams with no ``worker_init_fn``.

Order of the training pipeline: the geometric steps (zoom-out, crop, mirror) first, on the image
as decoded (uint8), then Resize, then the colour distortion on the size x size result. The seed
distorts colours first, on the full image; colour changes act on each pixel alone, so their order
with the geometric steps does not change what the network sees, except that the zoom-out canvas
is now distorted too. Distorting after the resize costs size^2 pixels instead of the whole
image (the cost of a sample: data-pipeline section of benchmarks/RESULTS.md).

Resize uses ``torch.nn.functional.interpolate`` (bilinear, no antialias, like the original SSD code's
``cv2.resize``): on one thread it was 2-8x faster than PIL for 128-300 px outputs
(375x500 -> 300: 0.9 ms vs 1.9 ms; 1100x1500 -> 300: 1.8 ms vs 15.6 ms).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import box_convert

from ssdlab.model.box_coder import encode
from ssdlab.model.matcher import match
from ssdlab.model.priors import make_priors

Sample = tuple[np.ndarray, "np.ndarray | None", "np.ndarray | None"]


def torch_seeded_rng() -> np.random.Generator:
    """A fresh numpy Generator seeded from torch's global RNG (per-process, per-worker streams)."""
    return np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))


def drop_empty(boxes: np.ndarray | None, labels: np.ndarray | None) -> tuple:
    """Remove boxes of zero (or negative) width or height, and their labels."""
    if boxes is None:
        return boxes, labels
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return boxes[keep], (labels[keep] if labels is not None else None)


class RandomTransform:
    """Base class of transforms that draw random numbers; Compose passes them its ``rng``."""

    def __call__(self, image: np.ndarray, boxes=None, labels=None,
                 rng: np.random.Generator | None = None) -> Sample:
        """Transform one sample with draws from rng (a torch-seeded Generator when None)."""
        return self.apply(image, boxes, labels, rng if rng is not None else torch_seeded_rng())

    def apply(self, image: np.ndarray, boxes, labels, rng: np.random.Generator) -> Sample:
        """The transform itself (subclasses implement it)."""
        raise NotImplementedError


class Compose:
    """Apply transforms one after the other."""

    def __init__(self, transforms: list):
        self.transforms = list(transforms)

    def __call__(self, image: np.ndarray, boxes=None, labels=None,
                 rng: np.random.Generator | None = None) -> Sample:
        """Run every transform in order; random ones draw from rng (see the module docstring)."""
        for transform in self.transforms:
            if isinstance(transform, RandomTransform):
                image, boxes, labels = transform(image, boxes, labels, rng=rng)
            else:
                image, boxes, labels = transform(image, boxes, labels)
        return image, boxes, labels

    def __repr__(self) -> str:
        """The names of the steps, e.g. Compose(Resize, SubtractMeans, ToTensor)."""
        return "Compose(" + ", ".join(type(t).__name__ for t in self.transforms) + ")"


class AsArrays:
    """Boxes as float32 [K, 4] and labels as int64 [K] arrays; the image keeps its dtype.

    A uint8 image stays uint8 through the geometric steps (a quarter of the bytes to move);
    Resize turns it into float32.
    """

    def __call__(self, image: np.ndarray, boxes=None, labels=None) -> Sample:
        """Return the image and array copies of boxes and labels."""
        boxes = None if boxes is None else np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        labels = None if labels is None else np.asarray(labels, dtype=np.int64).reshape(-1)
        return image, boxes, labels


def rgb_to_hsv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """HxWx3 RGB in [0, 255] -> planes H in [0, 360), S in [0, 1], V in [0, 255] (vectorised)."""
    r, g, b = (np.ascontiguousarray(rgb[..., c]) for c in range(3))
    value = np.maximum(np.maximum(r, g), b)
    chroma = value - np.minimum(np.minimum(r, g), b)
    safe = np.maximum(chroma, 1e-6)
    sector = np.where(value == r, (g - b) / safe,
                      np.where(value == g, (b - r) / safe + 2, (r - g) / safe + 4))
    sector = np.where(sector < 0, sector + 6, sector)
    hue = np.where(chroma > 0, sector * 60, 0)
    return hue, chroma / np.maximum(value, 1e-6), value


def hsv_to_rgb(hue: np.ndarray, saturation: np.ndarray, value: np.ndarray) -> np.ndarray:
    """Inverse of rgb_to_hsv: channel n = V - V*S*clip(min(k, 4-k), 0, 1), k = (n + H/60) mod 6."""
    channels = []
    for n in (5, 3, 1):  # R, G, B
        k = hue / 60 + n
        k = np.where(k >= 6, k - 6, k)
        channels.append(value - value * saturation * np.clip(np.minimum(k, 4 - k), 0, 1))
    return np.stack(channels, axis=-1)


class PhotometricDistort(RandomTransform):
    """Random brightness, contrast, saturation and hue, then a random channel swap (each p=0.5).

    Contrast comes before or after the HSV changes (p=0.5 each), as in the SSD recipe.
    Unlike the original SSD code, values are clipped to [0, 255] (S to [0, 1]) so every step sees a valid image.
    """

    def __init__(self, brightness_delta: float = 32.0, contrast: tuple[float, float] = (0.5, 1.5),
                 saturation: tuple[float, float] = (0.5, 1.5), hue_delta: float = 18.0):
        self.brightness_delta = brightness_delta
        self.contrast = contrast
        self.saturation = saturation
        self.hue_delta = hue_delta

    def apply(self, image: np.ndarray, boxes, labels, rng: np.random.Generator) -> Sample:
        """Distort the colours of the image; boxes and labels pass through."""
        image = image.astype(np.float32)
        if rng.random() < 0.5:
            image = np.clip(image + rng.uniform(-self.brightness_delta, self.brightness_delta), 0, 255)
        contrast_first = rng.random() < 0.5
        if contrast_first:
            image = self._contrast(image, rng)
        image = self._saturation_hue(image, rng)
        if not contrast_first:
            image = self._contrast(image, rng)
        if rng.random() < 0.5:
            image = image[..., rng.permutation(3)]
        return image, boxes, labels

    def _contrast(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Scale all values by a random factor with p=0.5."""
        if rng.random() < 0.5:
            image = np.clip(image * rng.uniform(*self.contrast), 0, 255)
        return image

    def _saturation_hue(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Scale S and shift H (each with p=0.5) in HSV space."""
        scale = rng.uniform(*self.saturation) if rng.random() < 0.5 else None
        shift = rng.uniform(-self.hue_delta, self.hue_delta) if rng.random() < 0.5 else None
        if scale is None and shift is None:
            return image
        hue, saturation, value = rgb_to_hsv(image)
        if scale is not None:
            saturation = np.clip(saturation * scale, 0, 1)
        if shift is not None:
            hue = (hue + shift) % 360
        return hsv_to_rgb(hue, saturation, value)


class Expand(RandomTransform):
    """With p=0.5, place the image at a random spot of a canvas 1-4x its size filled with the mean."""

    def __init__(self, mean: list[float], max_ratio: float = 4.0, p: float = 0.5):
        self.mean = np.asarray(mean, dtype=np.float32)
        self.max_ratio = max_ratio
        self.p = p

    def apply(self, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray,
              rng: np.random.Generator) -> Sample:
        """Zoom out: a larger canvas, boxes shifted by the paste offset."""
        if rng.random() >= self.p:
            return image, boxes, labels
        height, width, channels = image.shape
        ratio = rng.uniform(1, self.max_ratio)
        left = int(rng.uniform(0, width * ratio - width))
        top = int(rng.uniform(0, height * ratio - height))
        canvas = np.empty((int(height * ratio), int(width * ratio), channels), dtype=image.dtype)
        fill = np.round(self.mean) if image.dtype == np.uint8 else self.mean
        canvas[:] = np.tile(fill.astype(image.dtype), (canvas.shape[1], 1))  # one row, copied down (fast)
        canvas[top:top + height, left:left + width] = image
        boxes = boxes + np.array([left, top, left, top], dtype=np.float32)
        return (canvas, *drop_empty(boxes, labels))


def iou_with_rect(boxes: np.ndarray, rect: np.ndarray) -> np.ndarray:
    """IoU of [K, 4] xyxy boxes with one xyxy rectangle (numpy: ~20x faster than a torch call here)."""
    lt = np.maximum(boxes[:, :2], rect[:2])
    rb = np.minimum(boxes[:, 2:], rect[2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
    area_boxes = np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)
    area_rect = np.prod(rect[2:] - rect[:2])
    return inter / (area_boxes + area_rect - inter)


class RandomSampleCrop(RandomTransform):
    """Crop a random patch whose IoU with some box is at least the sampled minimum (SSD paper).

    A mode is drawn by index from MODES: None keeps the whole image; otherwise up to
    ``max_trials`` patches (sides 0.3-1 of the image, aspect 0.5-2) are tried until one has
    max IoU >= min_iou, min IoU <= max_iou, and at least one box centre strictly inside. Kept
    boxes are those whose centre is inside, clipped to the patch. Images without boxes are
    returned unchanged.
    """

    MODES = (None, (0.1, np.inf), (0.3, np.inf), (0.7, np.inf), (0.9, np.inf), (-np.inf, np.inf))

    def __init__(self, max_trials: int = 50):
        self.max_trials = max_trials

    def apply(self, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray,
              rng: np.random.Generator) -> Sample:
        """Return the cropped image and the boxes inside it."""
        if len(boxes) == 0:
            return image, boxes, labels
        while True:  # ends: the None mode is drawn with probability 1/6 per round
            mode = self.MODES[rng.integers(len(self.MODES))]
            if mode is None:
                return image, boxes, labels
            for _ in range(self.max_trials):
                result = self._try_crop(image, boxes, labels, mode, rng)
                if result is not None:
                    return result

    def _try_crop(self, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray,
                  mode: tuple[float, float], rng: np.random.Generator) -> Sample | None:
        """One random patch; None when it breaks the constraints."""
        height, width = image.shape[:2]
        w = rng.uniform(0.3 * width, width)
        h = rng.uniform(0.3 * height, height)
        if not 0.5 <= h / w <= 2:
            return None
        left = rng.uniform(0, width - w)
        top = rng.uniform(0, height - h)
        rect = np.array([int(left), int(top), int(left + w), int(top + h)])
        overlap = iou_with_rect(boxes, rect)
        if overlap.max() < mode[0] or overlap.min() > mode[1]:
            return None
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        inside = np.all((centres > rect[:2]) & (centres < rect[2:]), axis=1)
        if not inside.any():
            return None
        kept = boxes[inside].copy()
        kept[:, :2] = np.maximum(kept[:, :2], rect[:2]) - rect[:2]
        kept[:, 2:] = np.minimum(kept[:, 2:], rect[2:]) - rect[:2]
        crop = image[rect[1]:rect[3], rect[0]:rect[2]]
        return (crop, *drop_empty(kept, labels[inside]))


class RandomMirror(RandomTransform):
    """With p=0.5, flip the image left-right (box x1, x2 -> W - x2, W - x1)."""

    def __init__(self, p: float = 0.5):
        self.p = p

    def apply(self, image: np.ndarray, boxes, labels, rng: np.random.Generator) -> Sample:
        """Maybe mirror the image and the boxes."""
        if rng.random() >= self.p:
            return image, boxes, labels
        width = image.shape[1]
        image = image[:, ::-1]
        if boxes is not None:
            boxes = boxes.copy()
            boxes[:, 0::2] = width - boxes[:, 2::-2]
        return (image, *drop_empty(boxes, labels))


class ToPercentCoords:
    """Divide pixel boxes by the image width and height: [0, 1] normalised xyxy."""

    def __call__(self, image: np.ndarray, boxes=None, labels=None) -> Sample:
        """Normalise the boxes."""
        if boxes is not None:
            height, width = image.shape[:2]
            boxes = boxes / np.array([width, height, width, height], dtype=np.float32)
        return (image, *drop_empty(boxes, labels))


class Resize:
    """Resize the image to size x size (bilinear); boxes must already be normalised."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, image: np.ndarray, boxes=None, labels=None) -> Sample:
        """Return a float32 size x size x 3 image; boxes and labels pass through."""
        tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).permute(2, 0, 1)[None]
        resized = F.interpolate(tensor, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return (resized[0].permute(1, 2, 0).numpy(), *drop_empty(boxes, labels))


class SubtractMeans:
    """Subtract the per-channel pixel mean (RGB order), as float32."""

    def __init__(self, mean: list[float]):
        self.mean = np.asarray(mean, dtype=np.float32)

    def __call__(self, image: np.ndarray, boxes=None, labels=None) -> Sample:
        """Return image - mean."""
        return image.astype(np.float32) - self.mean, boxes, labels


class ToTensor:
    """HxWx3 numpy image -> float32 CHW torch tensor; boxes and labels stay numpy."""

    def __call__(self, image: np.ndarray, boxes=None, labels=None) -> tuple[torch.Tensor, np.ndarray | None, np.ndarray | None]:
        """Convert the image."""
        chw = np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)
        return torch.from_numpy(chw), boxes, labels


def build_transforms(cfg, is_train: bool) -> Compose:
    """The training pipeline (augmentation unless SOLVER.AUGMENT is False; INPUT.EXPAND_MAX_RATIO <= 1,
    INPUT.CROP False or INPUT.PHOTOMETRIC False leave out zoom-out, the IoU crop or the colour distortion)
    or the test pipeline."""
    size, mean = cfg.INPUT.IMAGE_SIZE, cfg.INPUT.PIXEL_MEAN
    if not is_train:
        return Compose([Resize(size), SubtractMeans(mean), ToTensor()])
    augment = cfg.SOLVER.AUGMENT
    geometric = [*([Expand(mean, cfg.INPUT.EXPAND_MAX_RATIO)] if cfg.INPUT.EXPAND_MAX_RATIO > 1 else []),
                 *([RandomSampleCrop()] if cfg.INPUT.CROP else []),
                 RandomMirror()] if augment else []
    colour = [PhotometricDistort()] if augment and cfg.INPUT.PHOTOMETRIC else []
    return Compose([AsArrays(), *geometric, ToPercentCoords(), Resize(size), *colour, SubtractMeans(mean),
                    ToTensor()])


class TargetTransform:
    """Normalised GT boxes and labels -> per-prior regression targets and labels (match + encode)."""

    def __init__(self, priors: torch.Tensor, center_variance: float, size_variance: float,
                 iou_threshold: float):
        self.priors = priors
        self.priors_xyxy = box_convert(priors, in_fmt="cxcywh", out_fmt="xyxy")  # once, not per sample
        self.center_variance = center_variance
        self.size_variance = size_variance
        self.iou_threshold = iou_threshold

    def __call__(self, boxes, labels) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (encoded Tensor[N, 4], labels LongTensor[N]); no boxes -> all background."""
        boxes = torch.as_tensor(np.asarray(boxes, dtype=np.float32)).reshape(-1, 4)
        labels = torch.as_tensor(np.asarray(labels, dtype=np.int64)).reshape(-1)
        prior_labels, prior_boxes = match(boxes, labels, self.priors, self.iou_threshold, self.priors_xyxy)
        encoded = encode(prior_boxes, self.priors, self.center_variance, self.size_variance)
        return encoded, prior_labels


def build_target_transform(cfg) -> TargetTransform:
    """A TargetTransform with the priors, variances and IoU threshold of the config."""
    priors = make_priors(cfg.MODEL.PRIORS, cfg.INPUT.IMAGE_SIZE)
    return TargetTransform(priors, cfg.MODEL.CENTER_VARIANCE, cfg.MODEL.SIZE_VARIANCE,
                           cfg.MODEL.THRESHOLD)
