"""The "Oxford hand" text format, the original SSD code's format for any custom dataset.

``NAME.data`` holds ``key= value`` lines (``#`` starts a comment)::

    classes= 1
    train= train.txt          # list files: one image path per line
    valid= valid.txt
    names= hand.names         # one class name per line
    images= images            # root folder of the images
    labels= labels            # root folder of the label files

Paths in the ``.data`` file, and image paths in the list files, are relative to the folder
of the ``.data`` file unless absolute. ``images`` and ``labels`` default to ``images`` and
``labels``. The label file of an image is its path below ``images`` moved below ``labels``
with the extension ``.txt``; one object per line, ``cls xc yc w h`` normalised to [0, 1],
``cls`` 0-based over the names (label = cls + 1). An empty label file is an image without
objects; a missing label file is an error (it usually means a wrong ``labels`` root).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from ssdlab.data.base import (DetectionDataset, ImageRecord, box_problem, drop_unreadable, image_size, make_record,
                              warn_invalid)
from ssdlab.errors import DataError
from ssdlab.files import read_text

PIXEL_LIMIT = 2.0  # a centre or size this far beyond 0..1 is in pixels, not a fraction of the image


def read_data_file(path: Path) -> dict[str, str]:
    """The key/value pairs of a .data file; DataError naming the file and line when malformed."""
    try:
        text = read_text(path, DataError, "a NAME.data file of 'key= value' lines")
    except FileNotFoundError:
        raise DataError(f".data file {path} does not exist; give the path of an existing NAME.data file") from None
    entries = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise DataError(f"{path}:{number}: expected 'key= value', got {line!r}")
        entries[key.strip()] = value.strip()
    return entries


def local_path(base: Path, value: str) -> Path:
    """value as an absolute, normalised path (relative values are relative to base; no symlink resolution)."""
    path = Path(value).expanduser()
    return Path(os.path.abspath(path if path.is_absolute() else base / path))


def read_names(path: Path) -> list[str]:
    """The class names of a .names file (one per non-empty line)."""
    try:
        return [line.strip() for line in read_text(path, DataError, "a .names file").splitlines() if line.strip()]
    except FileNotFoundError:
        raise DataError(f"class names file {path} does not exist; fix the 'names' entry of the .data file") from None


def read_list(path: Path, base: Path) -> list[Path]:
    """The image paths of a list file (relative ones are relative to base)."""
    try:
        lines = read_text(path, DataError, "a list file of image paths").splitlines()
    except FileNotFoundError:
        raise DataError(f"image list {path} does not exist; fix the split's entry of the .data file") from None
    return [local_path(base, line.strip()) for line in lines if line.strip()]


def label_path(image: Path, images_root: Path, labels_root: Path) -> Path:
    """The label file of an image: its path below images_root moved below labels_root, as .txt."""
    try:
        relative = image.relative_to(images_root)
    except ValueError:
        raise DataError(f"image {image} is not inside the images root {images_root}; fix the 'images' "
                        "entry of the .data file or the list file") from None
    return (labels_root / relative).with_suffix(".txt")


def read_labels(path: Path, width: int, height: int, num_classes: int) -> tuple[list, list]:
    """(boxes xyxy pixels, labels 1..num_classes) of one label file; DataError with file and line."""
    try:
        lines = read_text(path, DataError, "a label file of 'cls xc yc w h' lines").splitlines()
    except FileNotFoundError:
        raise DataError(f"label file {path} does not exist; every listed image needs one "
                        "(an empty file means no objects)") from None
    boxes, labels, problems = [], [], []
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 5:
            raise DataError(f"{path}:{number}: expected 5 fields 'cls xc yc w h', got {len(fields)}: {line!r}")
        try:
            cls = int(fields[0])
            xc, yc, w, h = (float(f) for f in fields[1:])
        except ValueError:
            raise DataError(f"{path}:{number}: expected an integer class and four numbers, got {line!r}") from None
        if not 0 <= cls < num_classes:
            raise DataError(f"{path}:{number}: class id {cls} is out of range 0..{num_classes - 1} "
                            "(the .names file has that many classes)")
        if max(xc, yc, w, h) > PIXEL_LIMIT:
            raise DataError(f"{path}:{number}: {line.strip()!r} looks like pixel coordinates; this format wants "
                            "'cls xc yc w h' as fractions 0..1 of the image (divide x and w by the image width, "
                            "y and h by its height)")
        box = [(xc - w / 2) * width, (yc - h / 2) * height, (xc + w / 2) * width, (yc + h / 2) * height]
        problem = box_problem(*box)
        if problem:
            problems.append(f"line {number}: {problem}")
            continue
        boxes.append(box)
        labels.append(cls + 1)
    warn_invalid(path, problems)
    return boxes, labels


class TextDataset(DetectionDataset):
    """One split ('train', 'valid' or any list key) of a dataset described by a .data file."""

    def __init__(self, data_file: str | Path, split: str = "train", transform: Callable | None = None,
                 target_transform: Callable | None = None, cache: bool = False,
                 skip_bad_images: bool = False, keep_difficult: bool = False):
        self.data_file, self.split = Path(data_file), split
        entries = read_data_file(self.data_file)
        base = self.data_file.parent
        for key in (split, "names"):
            if key not in entries:
                raise DataError(f"{self.data_file}: no '{key}=' entry (it has: {', '.join(entries) or 'nothing'})")
        names = read_names(local_path(base, entries["names"]))
        if "classes" in entries and entries["classes"].strip() != str(len(names)):
            raise DataError(f"{self.data_file}: classes= {entries['classes']} but {entries['names']} "
                            f"lists {len(names)} names; make them agree")
        images_root = local_path(base, entries.get("images", "images"))
        labels_root = local_path(base, entries.get("labels", "labels"))
        for key, folder in (("images", images_root), ("labels", labels_root)):
            if not folder.is_dir():
                raise DataError(f"{self.data_file}: the {key} folder {folder} does not exist; fix '{key}='")
        name = f"{self.data_file.stem} {split}"
        images = read_list(local_path(base, entries[split]), base)
        if skip_bad_images:
            images = drop_unreadable(images, lambda path: path, name)
        records = [self._record(image, images_root, labels_root, len(names)) for image in images]
        super().__init__(records, ("__background__", *names), name, transform, target_transform,
                         keep_difficult, cache)

    def _record(self, image: Path, images_root: Path, labels_root: Path, num_classes: int) -> ImageRecord:
        """The record of one listed image (its size read from the image header)."""
        width, height = image_size(image)
        boxes, labels = read_labels(label_path(image, images_root, labels_root), width, height, num_classes)
        image_id = image.relative_to(images_root).with_suffix("").as_posix()
        return make_record(image_id, image, width, height, boxes, labels)
