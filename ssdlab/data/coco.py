"""COCO instances annotations (``annotations/instances_*.json``) read through pycocotools.

Crowd boxes (``iscrowd=1``) and background categories (labelme's ``_background_``) are dropped;
``bbox = [x, y, w, h]`` becomes xyxy; category ids
(1..90 with gaps in COCO) become contiguous labels 1..K in sorted id order, and the class
names come from the categories. With ``remove_empty`` (training) images left without any
box are dropped. ``label_to_category`` maps labels back to category ids for COCOeval, and
``ids`` are the COCO image ids.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
from pathlib import Path
from typing import Callable

from pycocotools.coco import COCO

from ssdlab.data.base import (DetectionDataset, ImageRecord, box_problem, drop_unreadable, image_size, make_record,
                              warn_invalid)
from ssdlab.errors import DataError

log = logging.getLogger(__name__)


def load_coco(ann_file: Path) -> COCO:
    """A pycocotools COCO index of ann_file (its progress prints silenced); DataError when unusable."""
    try:
        data = json.loads(ann_file.read_text())
    except FileNotFoundError:
        raise DataError(f"COCO annotation file {ann_file} does not exist; download it with "
                        "data_scripts/COCO2014.sh or set COCO_ROOT") from None
    except ValueError as err:
        raise DataError(f"{ann_file}: not valid JSON ({err}); download the file again") from None
    if not isinstance(data, dict) or any(key not in data for key in ("images", "annotations", "categories")):
        raise DataError(f"{ann_file}: not a COCO instances file (it needs 'images', 'annotations' "
                        "and 'categories' at the top level)")
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def is_background(category: dict) -> bool:
    """True for a background category (labelme's COCO export writes '_background_' with id 0)."""
    return str(category.get("name", "")).strip("_ ").lower() == "background"


def xyxy(ann: dict, ann_file: Path) -> list[float]:
    """An annotation's bbox [x, y, w, h] as corners; DataError naming the annotation when it is not 4 numbers."""
    bbox = ann.get("bbox")
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
        raise DataError(f"{ann_file}: annotation {ann.get('id')} has bbox {bbox!r}; a COCO bbox is "
                        "[x, y, width, height], four numbers in pixels: fix the annotation file")
    x, y, w, h = bbox
    return [x, y, x + w, y + h]


def image_dims(info: dict, file: Path) -> tuple[int, int]:
    """(width, height) of an 'images' entry, from the image header when the entry lacks them."""
    width, height = info.get("width"), info.get("height")
    if isinstance(width, (int, float)) and isinstance(height, (int, float)) and width > 0 and height > 0:
        return int(width), int(height)
    return image_size(file)


def image_records(coco: COCO, image_root: Path, category_to_label: dict[int, int],
                  ann_file: Path) -> list[ImageRecord]:
    """One ImageRecord per image, sorted by image id, crowd boxes and background-category boxes left out."""
    background = {c for c, cat in coco.cats.items() if is_background(cat)}
    records, problems = [], []
    for image_id in sorted(coco.imgs):
        info = coco.imgs[image_id]
        if "file_name" not in info:
            raise DataError(f"{ann_file}: image {image_id} has no 'file_name'; fix the annotation file")
        anns = [a for a in coco.imgToAnns.get(image_id, [])
                if not a.get("iscrowd", 0) and a.get("category_id") not in background]
        unknown = [a.get("id") for a in anns if a.get("category_id") not in category_to_label]
        if unknown:
            raise DataError(f"{ann_file}: annotation {unknown[0]} has a category_id missing from "
                            "'categories'; fix the annotation file")
        boxes, labels = [], []
        for ann in anns:
            box = xyxy(ann, ann_file)
            problem = box_problem(*box)
            if problem:
                problems.append(f"annotation {ann.get('id')}: {problem}")
                continue
            boxes.append(box)
            labels.append(category_to_label[ann["category_id"]])
        file = image_root / info["file_name"]
        records.append(make_record(image_id, file, *image_dims(info, file), boxes, labels))
    warn_invalid(ann_file, problems)
    warn_orphans(coco, ann_file)
    return records


def warn_orphans(coco: COCO, ann_file: Path) -> None:
    """One warning naming the annotations whose image_id no 'images' entry has (left out: no image to read)."""
    orphans = [a.get("id") for a in coco.dataset.get("annotations", []) if a.get("image_id") not in coco.imgs]
    if orphans:
        log.warning("%s: %d annotations name an image_id missing from 'images' (first: annotation %s); they are "
                    "left out — fix the image_id or add the image", ann_file, len(orphans), orphans[0])


class COCODataset(DetectionDataset):
    """COCO images under image_root with boxes from ann_file (e.g. train2014 + instances_train2014.json)."""

    def __init__(self, image_root: str | Path, ann_file: str | Path, remove_empty: bool = False,
                 transform: Callable | None = None, target_transform: Callable | None = None,
                 cache: bool = False, skip_bad_images: bool = False, keep_difficult: bool = False):
        self.image_root, self.ann_file = Path(image_root), Path(ann_file)
        if not self.image_root.is_dir():
            raise DataError(f"COCO image folder {self.image_root} does not exist; download it with "
                            "data_scripts/COCO2014.sh or set COCO_ROOT")
        self.coco = load_coco(self.ann_file)
        category_ids = sorted(c for c, cat in self.coco.cats.items() if not is_background(cat))
        self.category_to_label = {cat: label for label, cat in enumerate(category_ids, start=1)}
        self.label_to_category = {label: cat for cat, label in self.category_to_label.items()}
        names = (str(self.coco.cats[c].get("name") or f"category {c}") for c in category_ids)
        class_names = ("__background__", *names)
        name = f"COCO {self.ann_file.stem}"
        records = image_records(self.coco, self.image_root, self.category_to_label, self.ann_file)
        if skip_bad_images:
            records = drop_unreadable(records, lambda record: record.file, name)
        super().__init__(records, class_names, name, transform, target_transform, keep_difficult, cache)
        if remove_empty:
            self.records = [record for record in self.records if len(record.boxes)]
            self.ids = [record.id for record in self.records]
