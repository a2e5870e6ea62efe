"""PASCAL VOC: ``root/{Annotations/<id>.xml, ImageSets/Main/<split>.txt, JPEGImages/<id>.jpg}``.

The image of id X is ``JPEGImages/X.jpg`` (``.png`` and ``.jpeg`` are accepted too). XML
boxes are 1-based pixel indices, so 1 is subtracted from every corner; objects marked
``<difficult>1</difficult>`` are kept in ``get_annotation`` (the evaluation ignores them)
and left out of training samples unless ``keep_difficult``.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Callable, Sequence, cast

from ssdlab.data.base import (DetectionDataset, ImageRecord, box_problem, drop_unreadable, image_size, make_record,
                              warn_invalid)
from ssdlab.errors import DataError
from ssdlab.files import read_text

VOC_CLASSES = ("__background__", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car",
               "cat", "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person",
               "pottedplant", "sheep", "sofa", "train", "tvmonitor")
IMAGE_SUFFIXES = (".jpg", ".png", ".jpeg", ".JPG", ".PNG", ".JPEG")


def read_split(root: Path, split: str) -> list[str]:
    """The image ids listed in ImageSets/Main/<split>.txt (first word of each non-empty line)."""
    path = root / "ImageSets" / "Main" / f"{split}.txt"
    if not path.is_file():
        available = sorted(p.stem for p in path.parent.glob("*.txt"))[:10] if path.parent.is_dir() else []
        raise DataError(f"VOC split file {path} does not exist; pick a split that exists "
                        f"(found: {', '.join(available) or 'none'}) or download the dataset "
                        "(data_scripts/VOC2007.sh)")
    text = read_text(path, DataError, "a VOC split file of image ids")
    return [line.split()[0] for line in text.splitlines() if line.strip()]


def find_image(image_dir: Path, image_id: str) -> Path:
    """JPEGImages/<id> with the first existing image suffix (the .jpg path when none exists)."""
    for suffix in IMAGE_SUFFIXES:
        candidate = image_dir / f"{image_id}{suffix}"
        if candidate.is_file():
            return candidate
    return image_dir / f"{image_id}.jpg"


def xml_number(node: ET.Element, key: str, path: Path) -> float:
    """A numeric child of an XML node; DataError naming the file when missing or not a number."""
    text = node.findtext(key)
    try:
        return float(cast(str, text))  # None raises the TypeError caught here
    except (TypeError, ValueError):
        raise DataError(f"{path}: <{key}> is {text!r}, expected a number; fix the annotation file") from None


def parse_annotation(path: Path, class_to_label: dict[str, int]) -> tuple[list, list, list, tuple | None]:
    """(boxes 0-based xyxy, labels, difficult, (width, height) or None) of one VOC XML file."""
    try:
        root = ET.parse(path).getroot()
    except FileNotFoundError:
        raise DataError(f"VOC annotation {path} does not exist; the split file lists an id "
                        "without an annotation") from None
    except ET.ParseError as err:
        raise DataError(f"{path}: not valid XML ({err}); fix or remove the annotation") from None
    boxes, labels, difficult, problems = [], [], [], []
    for number, obj in enumerate(root.iter("object"), start=1):
        name = (obj.findtext("name") or "").strip()
        if name not in class_to_label:
            raise DataError(f"{path}: object {number} has class {name!r}, which is not one of the "
                            f"{len(class_to_label)} class names given to the dataset")
        bndbox = obj.find("bndbox")
        if bndbox is None:
            raise DataError(f"{path}: object {number} ({name}) has no <bndbox>")
        box = [xml_number(bndbox, key, path) - 1 for key in ("xmin", "ymin", "xmax", "ymax")]
        problem = box_problem(*box)
        if problem:
            problems.append(f"object {number} ({name}): {problem}")
            continue
        boxes.append(box)
        labels.append(class_to_label[name])
        difficult.append((obj.findtext("difficult") or "0").strip() == "1")
    warn_invalid(path, problems)
    size = root.find("size")
    known = size is not None and size.findtext("width") and size.findtext("height")
    sized = cast(ET.Element, size)  # not None where known
    dims = (int(xml_number(sized, "width", path)), int(xml_number(sized, "height", path))) if known else None
    return boxes, labels, difficult, dims


def load_records(root: Path, split: str, class_names: Sequence[str], name: str,
                 skip_bad_images: bool = False) -> list[ImageRecord]:
    """One ImageRecord per id of the split (image size from the XML, else from the image)."""
    for sub in ("Annotations", "JPEGImages"):
        if not (root / sub).is_dir():
            raise DataError(f"VOC folder {root / sub} does not exist; point the dataset at a VOC "
                            "year folder such as VOCdevkit/VOC2007 (data_scripts/VOC2007.sh downloads it)")
    class_to_label = {cls: i for i, cls in enumerate(class_names) if i > 0}
    images = [(image_id, find_image(root / "JPEGImages", image_id)) for image_id in read_split(root, split)]
    if skip_bad_images:
        images = drop_unreadable(images, lambda item: item[1], name)
    records = []
    for image_id, file in images:
        boxes, labels, difficult, dims = parse_annotation(root / "Annotations" / f"{image_id}.xml", class_to_label)
        width, height = dims if dims and min(dims) > 0 else image_size(file)
        records.append(make_record(image_id, file, width, height, boxes, labels, difficult))
    return records


class VOCDataset(DetectionDataset):
    """A VOC year folder and split, e.g. VOCDataset("datasets/VOCdevkit/VOC2007", "trainval")."""

    def __init__(self, root: str | Path, split: str, keep_difficult: bool = False,
                 class_names: Sequence[str] = VOC_CLASSES, transform: Callable | None = None,
                 target_transform: Callable | None = None, cache: bool = False,
                 skip_bad_images: bool = False):
        self.root, self.split = Path(root), split
        if not self.root.is_dir():
            raise DataError(f"VOC folder {self.root} does not exist; download it with "
                            "data_scripts/VOC2007.sh or set VOC_ROOT")
        name = f"{self.root.name} {split}"
        records = load_records(self.root, split, class_names, name, skip_bad_images)
        super().__init__(records, class_names, name, transform, target_transform, keep_difficult, cache)
