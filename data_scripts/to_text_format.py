"""Convert a VOC or COCO dataset (or any ssdlab dataset) to the text format, via ssdlab's loaders.

Usage:
    python data_scripts/to_text_format.py --voc ROOT SPLIT    --out OUT --as train|valid|test [--name NAME]
    python data_scripts/to_text_format.py --coco IMAGES JSON  --out OUT --as train|valid|test [--name NAME]
    python data_scripts/to_text_format.py --dataset NAME_OR_PATH --out OUT --as ...   (catalog names too)
    options: --keep-difficult (VOC: keep difficult objects), --symlink (link images, do not copy)

Examples (VOC07+12 training set, VOC07 test set, one text dataset):
    python data_scripts/to_text_format.py --voc datasets/VOCdevkit/VOC2007 trainval --out voc_text --as train
    python data_scripts/to_text_format.py --voc datasets/VOCdevkit/VOC2012 trainval --out voc_text --as train
    python data_scripts/to_text_format.py --voc datasets/VOCdevkit/VOC2007 test --out voc_text --as valid

Each run adds its images to OUT/images/<as>/, OUT/labels/<as>/ and the list OUT/<as>.txt
(several runs with the same --as append), and (re)writes OUT/NAME.names and OUT/NAME.data.
Image file names are the dataset ids ('/' replaced by '_'); difficult VOC objects are left
out unless --keep-difficult (the text format has no difficult flag).
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

try:
    import ssdlab  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ssdlab.data.catalog import build_dataset  # noqa: E402
from ssdlab.data.coco import COCODataset  # noqa: E402
from ssdlab.data.voc import VOCDataset  # noqa: E402
from ssdlab.errors import DataError  # noqa: E402


def open_dataset(args: argparse.Namespace):
    """The source dataset chosen on the command line (all objects, difficult ones included)."""
    if args.voc:
        return VOCDataset(args.voc[0], args.voc[1], keep_difficult=True)
    if args.coco:
        return COCODataset(args.coco[0], args.coco[1], remove_empty=False)
    return build_dataset(args.dataset, is_train=args.split == "train")


def label_text(boxes, labels, width: int, height: int) -> str:
    """Text-format lines 'cls xc yc w h' (cls 0-based, normalised, 7 decimals)."""
    return "".join(f"{label - 1} {(x1 + x2) / 2 / width:.7f} {(y1 + y2) / 2 / height:.7f} "
                   f"{(x2 - x1) / width:.7f} {(y2 - y1) / height:.7f}\n"
                   for (x1, y1, x2, y2), label in zip(boxes.tolist(), labels.tolist()))


def place_image(source: Path, target: Path, symlink: bool) -> None:
    """Copy (or link) one image file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if symlink:
        target.unlink(missing_ok=True)
        target.symlink_to(source.resolve())
    else:
        shutil.copyfile(source, target)


def write_names(out: Path, name: str, class_names: tuple[str, ...]) -> None:
    """Write NAME.names, refusing to mix datasets with different classes in one folder."""
    names = "".join(f"{n}\n" for n in class_names[1:])
    path = out / f"{name}.names"
    if path.is_file() and path.read_text() != names:
        raise DataError(f"{path} already lists other class names; convert into another --out folder")
    path.write_text(names)


def write_data(out: Path, name: str, num_classes: int) -> None:
    """Write NAME.data pointing at every list present in out."""
    present = [split for split in ("train", "valid", "test") if (out / f"{split}.txt").is_file()]
    lists = "".join(f"{split}= {split}.txt\n" for split in present)
    (out / f"{name}.data").write_text(f"classes= {num_classes}\n{lists}names= {name}.names\n"
                                      "images= images\nlabels= labels\n")


def convert(dataset, out: Path, split: str, name: str, keep_difficult: bool, symlink: bool) -> int:
    """Append every image of dataset to the split of the text dataset in out; return the count."""
    out.mkdir(parents=True, exist_ok=True)
    write_names(out, name, dataset.class_names)
    lines = []
    for index in range(len(dataset)):
        info = dataset.get_img_info(index)
        source = Path(info["file"])
        stem = str(dataset.ids[index]).replace("/", "_")
        place_image(source, out / "images" / split / f"{stem}{source.suffix}", symlink)
        boxes, labels, difficult = dataset.get_annotation(index)
        if not keep_difficult:
            boxes, labels = boxes[~difficult], labels[~difficult]
        (out / "labels" / split).mkdir(parents=True, exist_ok=True)
        (out / "labels" / split / f"{stem}.txt").write_text(label_text(boxes, labels, info["width"], info["height"]))
        lines.append(f"images/{split}/{stem}{source.suffix}\n")
    with open(out / f"{split}.txt", "a") as listing:
        listing.writelines(lines)
    write_data(out, name, len(dataset.class_names) - 1)
    return len(lines)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--voc", nargs=2, metavar=("ROOT", "SPLIT"), help="a VOC year folder and split")
    source.add_argument("--coco", nargs=2, metavar=("IMAGES", "JSON"), help="COCO image folder and instances json")
    source.add_argument("--dataset", help="an ssdlab dataset name or path (see ssdlab.data.catalog)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--as", dest="split", choices=("train", "valid", "test"), required=True,
                        help="which list of the text dataset to add the images to")
    parser.add_argument("--name", default="dataset", help="base name of the .data and .names files")
    parser.add_argument("--keep-difficult", action="store_true", help="keep VOC difficult objects")
    parser.add_argument("--symlink", action="store_true", help="link the images instead of copying them")
    args = parser.parse_args(argv)
    try:
        count = convert(open_dataset(args), args.out, args.split, args.name, args.keep_difficult, args.symlink)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"added {count} images to {args.out / (args.split + '.txt')}; "
          f"dataset file {args.out / (args.name + '.data')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
