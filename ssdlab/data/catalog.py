"""Dataset names -> datasets: ``build_dataset("voc_2007_trainval", is_train=True)``.

Known names (roots from environment variables, relative to the working directory):

- ``voc_{2007,2012}_{train,val,trainval,test}``: ``$VOC_ROOT/VOC<year>`` (default ``datasets/VOCdevkit``)
- ``coco_2014_{train,val,minival,valminusminival}``: ``$COCO_ROOT`` (default ``datasets/coco``) with
  ``train2014/``, ``val2014/`` and ``annotations/instances_<split>2014.json``
- ``shapes_train``, ``shapes_val``: the synthetic set in ``$SHAPES_ROOT`` (default ``datasets/shapes``),
  read through its text format

Paths work too: ``path/to/NAME.data`` (the ``train`` list when is_train, else ``valid``) and a
shapes folder ``DIR`` (split from is_train), ``DIR:train`` or ``DIR:val``. A list of several
names gives one concatenated dataset. Training sets drop VOC difficult objects and COCO
images without boxes; test sets keep them.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

from ssdlab.config import CfgNode
from ssdlab.data.base import ConcatDetectionDataset, DetectionDataset
from ssdlab.data.coco import COCODataset
from ssdlab.data.textset import TextDataset
from ssdlab.data.transforms import build_target_transform, build_transforms
from ssdlab.data.voc import VOCDataset
from ssdlab.errors import ConfigError, DataError

VOC_NAMES = {f"voc_{year}_{split}": (year, split) for year in ("2007", "2012")
             for split in ("train", "val", "trainval", "test")}
COCO_NAMES = {
    "coco_2014_train": ("train2014", "instances_train2014.json"),
    "coco_2014_val": ("val2014", "instances_val2014.json"),
    "coco_2014_minival": ("val2014", "instances_minival2014.json"),
    "coco_2014_valminusminival": ("val2014", "instances_valminusminival2014.json"),
}
SHAPES_NAMES = {"shapes_train": "train", "shapes_val": "valid"}
SHAPES_SPLITS = {"train": "train", "val": "valid", "valid": "valid"}


def known_names() -> list[str]:
    """Every dataset name build_dataset understands (besides paths)."""
    return [*VOC_NAMES, *COCO_NAMES, *SHAPES_NAMES]


def env_root(variable: str, default: str) -> Path:
    """A dataset root from an environment variable, or its default."""
    return Path(os.environ.get(variable) or default)


def shapes_dataset(root: Path, split: str, **kwargs) -> TextDataset:
    """A split ('train' or 'valid') of a shapes folder; DataError saying how to generate a missing one."""
    data_file = root / "shapes.data"
    if not data_file.is_file():
        raise DataError(f"no shapes dataset in {root} (missing {data_file}); generate it with "
                        f"`python -m ssdlab data shapes --out {root}`")
    return TextDataset(data_file, split, **kwargs)


def split_folder_spec(name: str) -> tuple[str, str | None]:
    """'DIR:train' -> ('DIR', 'train'); a name without a split suffix -> (name, None)."""
    head, sep, tail = name.rpartition(":")
    if sep and head and tail in SHAPES_SPLITS:
        return head, SHAPES_SPLITS[tail]
    return name, None


def build_one(name: str, is_train: bool, **kwargs) -> DetectionDataset:
    """One dataset from a known name or a path."""
    if name in VOC_NAMES:
        year, split = VOC_NAMES[name]
        root = env_root("VOC_ROOT", "datasets/VOCdevkit") / f"VOC{year}"
        return VOCDataset(root, split, keep_difficult=not is_train, **kwargs)
    if name in COCO_NAMES:
        folder, ann = COCO_NAMES[name]
        root = env_root("COCO_ROOT", "datasets/coco")
        return COCODataset(root / folder, root / "annotations" / ann, remove_empty=is_train, **kwargs)
    if name in SHAPES_NAMES:
        return shapes_dataset(env_root("SHAPES_ROOT", "datasets/shapes"), SHAPES_NAMES[name], **kwargs)
    if name.endswith(".data"):
        return TextDataset(name, "train" if is_train else "valid", **kwargs)
    folder, folder_split = split_folder_spec(name)
    if folder_split is not None or Path(folder).is_dir():
        return shapes_dataset(Path(folder), folder_split or ("train" if is_train else "valid"), **kwargs)
    raise DataError(f"unknown dataset {name!r}: use one of {', '.join(known_names())}, a path to a "
                    ".data file, or a shapes folder (DIR, DIR:train or DIR:val)")


def build_dataset(name: str | Sequence[str], is_train: bool, transform: Callable | None = None,
                  target_transform: Callable | None = None, cache: bool = False,
                  skip_bad_images: bool = False) -> DetectionDataset | ConcatDetectionDataset:
    """The dataset called name (several names: their concatenation, which must share class names);
    skip_bad_images leaves out images that are missing or cannot be decoded (DATASETS.SKIP_BAD_IMAGES)."""
    names = [name] if isinstance(name, (str, Path)) else list(name)
    if not names:
        raise DataError("no dataset given; set DATASETS.TRAIN / DATASETS.TEST to one or more of "
                        f"{', '.join(known_names())} or a path")
    parts = [build_one(str(n), is_train, transform=transform, target_transform=target_transform, cache=cache,
                       skip_bad_images=skip_bad_images) for n in names]
    return parts[0] if len(parts) == 1 else ConcatDetectionDataset(parts)


def datasets(cfg: CfgNode, is_train: bool, with_transforms: bool = True):
    """The configured training (DATASETS.TRAIN) or test (DATASETS.TEST, first name) dataset."""
    names = cfg.DATASETS.TRAIN if is_train else cfg.DATASETS.TEST[:1]
    key = "DATASETS.TRAIN" if is_train else "DATASETS.TEST"
    if not names:
        raise ConfigError(f"{key} is empty; name a dataset (e.g. shapes_train) or a .data file")
    transform = build_transforms(cfg, is_train) if with_transforms else None
    target = build_target_transform(cfg) if is_train and with_transforms else None
    return build_dataset(names, is_train, transform=transform, target_transform=target,
                         cache=cfg.DATASETS.CACHE, skip_bad_images=cfg.DATASETS.SKIP_BAD_IMAGES)
