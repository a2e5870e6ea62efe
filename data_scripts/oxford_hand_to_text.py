"""Convert the official Oxford hand dataset to ssdlab's text format (.data/.names + labels).

Usage:
    python data_scripts/oxford_hand_to_text.py HAND_DATASET_DIR OUT_DIR [--symlink]

HAND_DATASET_DIR is the unpacked ``hand_dataset`` folder of
http://www.robots.ox.ac.uk/~vgg/data/hands/downloads/hand_dataset.tar.gz, holding
``{training,validation,test}_dataset/<...>_data/{images/*.jpg, annotations/*.mat}``.
Each .mat file has a ``boxes`` cell array; every box is a rotated quadrilateral with the
corners ``a, b, c, d`` stored as (y, x), 1-based. We take its axis-aligned bounding box,
subtract 1 (0-based), clip it to the image and write one ``0 xc yc w h`` line per hand.

Writes OUT_DIR/images/{train,valid,test}/, OUT_DIR/labels/{train,valid,test}/,
OUT_DIR/{train,valid,test}.txt, OUT_DIR/hand.names and OUT_DIR/hand.data; train with
``DATASETS.TRAIN ['OUT_DIR/hand.data']``. Needs scipy (``pip install scipy``).
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

SPLITS = {"train": "training_dataset", "valid": "validation_dataset", "test": "test_dataset"}


def load_quadrilaterals(mat_file: Path) -> list[np.ndarray]:
    """The hand boxes of one annotation file, each as a [4, 2] array of (x, y) corners, 1-based."""
    from scipy.io import loadmat  # imported here so --help works without scipy

    boxes = loadmat(mat_file, squeeze_me=True, struct_as_record=False).get("boxes")
    if boxes is None:
        raise SystemExit(f"error: {mat_file} has no 'boxes' variable; is it an Oxford hand annotation?")
    corners = []
    for box in np.atleast_1d(boxes):
        points = np.array([np.asarray(getattr(box, key), dtype=float).reshape(2) for key in "abcd"])
        corners.append(points[:, ::-1])  # (y, x) -> (x, y)
    return corners


def label_lines(quads: list[np.ndarray], width: int, height: int) -> list[str]:
    """'0 xc yc w h' lines of the axis-aligned boxes of the quadrilaterals (zero-area ones dropped)."""
    lines = []
    for quad in quads:
        x1, y1 = np.maximum(quad.min(0) - 1, 0)
        x2, y2 = np.minimum(quad.max(0) - 1, [width, height])
        if x2 > x1 and y2 > y1:
            lines.append(f"0 {(x1 + x2) / 2 / width:.7f} {(y1 + y2) / 2 / height:.7f} "
                         f"{(x2 - x1) / width:.7f} {(y2 - y1) / height:.7f}\n")
    return lines


def find_split(root: Path, folder: str) -> tuple[Path, Path]:
    """(images folder, annotations folder) of one split below root."""
    candidates = sorted((root / folder).glob("*/images"))
    if not candidates:
        raise SystemExit(f"error: no {root / folder}/*/images folder; pass the unpacked hand_dataset folder")
    images = candidates[0]
    return images, images.parent / "annotations"


def convert_split(root: Path, out: Path, split: str, symlink: bool) -> int:
    """Convert one split; return how many images it has."""
    images, annotations = find_split(root, SPLITS[split])
    listed = []
    for image in sorted(images.glob("*.jpg")):
        mat_file = annotations / f"{image.stem}.mat"
        if not mat_file.is_file():
            raise SystemExit(f"error: {image} has no annotation {mat_file}")
        with Image.open(image) as im:
            width, height = im.size
        target = out / "images" / split / image.name
        target.parent.mkdir(parents=True, exist_ok=True)
        if symlink:
            target.unlink(missing_ok=True)
            target.symlink_to(image.resolve())
        else:
            shutil.copyfile(image, target)
        label = out / "labels" / split / f"{image.stem}.txt"
        label.parent.mkdir(parents=True, exist_ok=True)
        label.write_text("".join(label_lines(load_quadrilaterals(mat_file), width, height)))
        listed.append(f"images/{split}/{image.name}\n")
    (out / f"{split}.txt").write_text("".join(listed))
    return len(listed)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("hand_dataset", type=Path, help="the unpacked hand_dataset folder")
    parser.add_argument("out", type=Path, help="output folder (text format)")
    parser.add_argument("--symlink", action="store_true", help="link the images instead of copying them")
    args = parser.parse_args(argv)
    try:
        import scipy.io  # noqa: F401
    except ImportError:
        print("error: reading the .mat annotations needs scipy; install it with `pip install scipy`",
              file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    counts = {split: convert_split(args.hand_dataset, args.out, split, args.symlink) for split in SPLITS}
    (args.out / "hand.names").write_text("hand\n")
    (args.out / "hand.data").write_text("classes= 1\ntrain= train.txt\nvalid= valid.txt\ntest= test.txt\n"
                                        "names= hand.names\nimages= images\nlabels= labels\n")
    print(f"wrote {args.out / 'hand.data'}: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
