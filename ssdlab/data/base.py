"""What every detection dataset shares: records, image reading, box clean-up, __getitem__.

A loader (VOC, COCO, text format) only turns its files into a list of ``ImageRecord``s;
``DetectionDataset`` does the rest:

- boxes beyond the image are clipped to [0, width] x [0, height], and boxes left with zero
  area are dropped (one warning per dataset naming the images); the loaders drop invalid boxes
  (a NaN corner, a negative size) with one warning per annotation file (``warn_invalid``);
- ``get_image(i)`` decodes the image (HxWx3 uint8 RGB), optionally caching it in memory;
- ``get_item(i, rng)`` / ``dataset[i]`` returns ``(image, {"boxes", "labels"}, i)`` after the
  transform and the target transform, without the difficult objects unless keep_difficult.

Boxes are float32 xyxy in pixels of the original image (0-based, continuous coordinates);
labels are int64 in 1..C-1 (0 is the background, ``class_names[0] == "__background__"``).
"""
from __future__ import annotations

import bisect
import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence, cast

import numpy as np
from PIL import Image
from torch.utils.data import ConcatDataset, Dataset

from ssdlab.errors import DataError

log = logging.getLogger(__name__)

IMAGE_ERRORS = (OSError, SyntaxError, ValueError, EOFError)  # what PIL raises on a bad file


@dataclass
class ImageRecord:
    """One image: its id, file, size and all its objects (difficult ones included)."""

    id: Any
    file: Path
    width: int
    height: int
    boxes: np.ndarray      # float32 [K, 4] xyxy pixels
    labels: np.ndarray     # int64 [K] in 1..C-1
    difficult: np.ndarray  # bool [K]


def make_record(id_: Any, file: Path, width: int, height: int, boxes: Sequence, labels: Sequence,
                difficult: Sequence | None = None) -> ImageRecord:
    """An ImageRecord with arrays of the right dtypes and shapes (also for zero objects)."""
    box_array = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    label_array = np.asarray(labels, dtype=np.int64).reshape(-1)
    flags = np.zeros(len(label_array), bool) if difficult is None else np.asarray(difficult, bool).reshape(-1)
    return ImageRecord(id_, Path(file), int(width), int(height), box_array, label_array, flags)


WIDE_GRAY = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")  # 16/32-bit and float grayscale


def rgb8(image: Image.Image) -> np.ndarray:
    """A PIL image as a writable HxWx3 uint8 RGB array; wide grayscale (16-bit PNG, say) scaled to 8 bits,
    which PIL's convert("RGB") would clip to white."""
    if image.mode not in WIDE_GRAY:
        return np.array(image.convert("RGB"))
    values = np.asarray(image, dtype=np.float64)
    if values.max(initial=0) > 255:  # 16-bit values: 65535 -> 255
        values = values / 257
    gray = np.clip(np.round(values), 0, 255).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=2)


SKIP_ADVICE = ("replace the file, or leave such images out: DATASETS.SKIP_BAD_IMAGES True "
               "(Python: skip_bad_images=True)")


def read_image(path: Path, advice: str = SKIP_ADVICE) -> np.ndarray:
    """Decode an image file to a writable HxWx3 uint8 RGB array; DataError naming the file when it cannot."""
    try:
        with Image.open(path) as image:
            return rgb8(image)
    except FileNotFoundError:
        raise DataError(f"image {path} does not exist; check the dataset folder or its list file") from None
    except IMAGE_ERRORS as err:
        raise DataError(f"cannot read image {path} ({err}); {advice}") from None


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the image header, without decoding the pixels."""
    try:
        with Image.open(path) as image:
            return image.size
    except FileNotFoundError:
        raise DataError(f"image {path} does not exist; check the dataset folder or its list file") from None
    except IMAGE_ERRORS as err:
        raise DataError(f"cannot read image {path} ({err}); {SKIP_ADVICE}") from None


def is_readable(path: Path) -> bool:
    """True when PIL can open and verify the file."""
    try:
        with Image.open(path) as image:
            image.verify()
        return True
    except IMAGE_ERRORS:
        return False


def drop_unreadable(items: list, path_of: Callable[[Any], Path], name: str) -> list:
    """The items whose image file is readable; logs how many were skipped."""
    kept = [item for item in items if is_readable(path_of(item))]
    if len(kept) < len(items):
        log.warning("%s: skipped %d unreadable or missing images (skip_bad_images=True)",
                    name, len(items) - len(kept))
    return kept


def box_problem(x1: float, y1: float, x2: float, y2: float) -> str | None:
    """Why a box of pixel corners is invalid (a coordinate that is not a finite number, x2 < x1, y2 < y1), or None."""
    if not np.isfinite([x1, y1, x2, y2]).all():
        return "a coordinate is not a finite number"
    if x2 < x1 or y2 < y1:
        return "negative width" if x2 < x1 else "negative height"
    return None


def warn_invalid(where: Path | str, problems: list[str]) -> None:
    """One warning for an annotation file whose invalid boxes were dropped, naming each (line, object, id)."""
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        log.warning("%s: dropped %d invalid box%s (%s); fix or remove %s", where, len(problems),
                    "es" if len(problems) > 1 else "", shown, "them" if len(problems) > 1 else "it")


def clean_boxes(record: ImageRecord) -> tuple[ImageRecord, int, int]:
    """Clip the record's boxes to its image and drop zero-area ones; return (record, clipped, dropped)."""
    limits = np.array([record.width, record.height] * 2, dtype=np.float32)
    clipped = np.clip(record.boxes, 0, limits)
    n_clipped = int(np.any(np.abs(clipped - record.boxes) > 1e-3, axis=1).sum())
    keep = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    cleaned = ImageRecord(record.id, record.file, record.width, record.height,
                          clipped[keep], record.labels[keep], record.difficult[keep])
    return cleaned, n_clipped, int((~keep).sum())


class DetectionDataset(Dataset):
    """A list of ImageRecords served as (image, {"boxes", "labels"}, index) samples."""

    def __init__(self, records: list[ImageRecord], class_names: Sequence[str], name: str,
                 transform: Callable | None = None, target_transform: Callable | None = None,
                 keep_difficult: bool = False, cache: bool = False):
        self.class_names = tuple(class_names)
        self.name = name
        self.transform, self.target_transform = transform, target_transform
        self.keep_difficult = keep_difficult
        self.records = self._clean(records)
        self.ids = [record.id for record in self.records]
        self._cache: dict[int, np.ndarray] | None = {} if cache else None

    def _clean(self, records: list[ImageRecord]) -> list[ImageRecord]:
        """Clip and filter every record's boxes; one log line per dataset naming the images concerned."""
        cleaned, clipped, dropped = [], 0, {}
        for record in records:
            record, n_clipped, n_dropped = clean_boxes(record)
            cleaned.append(record)
            clipped += n_clipped
            if n_dropped:
                dropped[record.file.name] = n_dropped
        if dropped:
            shown = ", ".join(f"{name} ({count})" for name, count in list(dropped.items())[:5])
            log.warning("%s: dropped %d boxes of zero area after clipping to the image: %s%s; check those "
                        "images' annotations", self.name, sum(dropped.values()), shown,
                        f" and {len(dropped) - 5} more images" if len(dropped) > 5 else "")
        if clipped:
            log.info("%s: clipped %d boxes that reached beyond their image", self.name, clipped)
        return cleaned

    def __len__(self) -> int:
        return len(self.records)

    def first(self, count: int) -> "DetectionDataset":
        """The same dataset limited to its first `count` images (a quick evaluation)."""
        part = copy.copy(self)
        part.records, part.ids = self.records[:count], self.ids[:count]
        return part

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {len(self)} images, {len(self.class_names) - 1} classes)"

    def get_image(self, index: int) -> np.ndarray:
        """The image as an HxWx3 uint8 RGB array (from the cache, read-only, when enabled)."""
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        image = read_image(self.records[index].file)
        if self._cache is not None:
            image.setflags(write=False)  # shared by every later call: transforms get a copy
            self._cache[index] = image
        return image

    def get_annotation(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(boxes float32 [K,4] xyxy pixels, labels int64 [K], difficult bool [K]), all objects."""
        record = self.records[index]
        return record.boxes.copy(), record.labels.copy(), record.difficult.copy()

    def get_img_info(self, index: int) -> dict:
        """{"height", "width", "file"} of the original image."""
        record = self.records[index]
        return {"height": record.height, "width": record.width, "file": str(record.file)}

    def get_item(self, index: int, rng: np.random.Generator | None = None) -> tuple[Any, dict, int]:
        """The sample (image, {"boxes", "labels"}, index); rng is handed to the transform when given."""
        image = self.get_image(index)
        if not image.flags.writeable:
            image = image.copy()
        boxes, labels, difficult = self.get_annotation(index)
        if not self.keep_difficult:
            boxes, labels = boxes[~difficult], labels[~difficult]
        if self.transform is not None:
            if rng is None:
                image, boxes, labels = self.transform(image, boxes, labels)
            else:
                image, boxes, labels = self.transform(image, boxes, labels, rng=rng)
        if self.target_transform is not None:
            boxes, labels = self.target_transform(boxes, labels)
        return image, {"boxes": boxes, "labels": labels}, index

    def __getitem__(self, index: int) -> tuple[Any, dict, int]:
        return self.get_item(index)


class ConcatDetectionDataset(ConcatDataset):
    """Several detection datasets with the same class names, indexed one after another."""

    def __init__(self, datasets: Sequence[DetectionDataset]):
        super().__init__(datasets)
        names = {tuple(d.class_names) for d in datasets}
        if len(names) > 1:
            listing = "; ".join(f"{d.name}: {len(d.class_names) - 1} classes" for d in datasets)
            raise DataError(f"cannot concatenate datasets with different class names ({listing}); "
                            "train on datasets that share one class list")
        self.class_names = tuple(datasets[0].class_names)
        self.name = "+".join(d.name for d in datasets)
        self.ids = [i for d in datasets for i in d.ids]

    def _locate(self, index: int) -> tuple[DetectionDataset, int]:
        """(part, index inside that part) of a global index."""
        if index < 0:
            index += len(self)
        part = bisect.bisect_right(self.cumulative_sizes, index)
        start = self.cumulative_sizes[part - 1] if part else 0
        return cast(DetectionDataset, self.datasets[part]), index - start

    def get_image(self, index: int) -> np.ndarray:
        """The image of a global index."""
        dataset, local = self._locate(index)
        return dataset.get_image(local)

    def get_annotation(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The annotation of a global index."""
        dataset, local = self._locate(index)
        return dataset.get_annotation(local)

    def get_img_info(self, index: int) -> dict:
        """The image info of a global index."""
        dataset, local = self._locate(index)
        return dataset.get_img_info(local)

    def get_item(self, index: int, rng: np.random.Generator | None = None) -> tuple[Any, dict, int]:
        """The sample of a global index, returned with the global index."""
        dataset, local = self._locate(index)
        image, targets, _ = dataset.get_item(local, rng=rng)
        return image, targets, index

    def __getitem__(self, index: int) -> tuple[Any, dict, int]:
        return self.get_item(index)
