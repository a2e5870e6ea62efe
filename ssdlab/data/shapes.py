"""The built-in synthetic detection dataset: five shape classes on noisy, textured backgrounds.

It is the offline default of the course and of the tests: ``generate_shapes(DIR)`` writes it
in a few tens of seconds, and the same seed always gives the same bytes (each image draws
from its own ``numpy.random.Generator`` seeded by (seed, split, index), so the number of
worker processes does not matter).

Each image is 128-192 px wide and high and holds 1-6 targets of the classes
``SHAPE_CLASSES``; a target's size (the longer side of its full box) is log-uniform between
8% and 60% of the image's shorter side, with random aspect ratio, rotation and colour. Some
targets are placed across the image border or on top of an earlier target on purpose, so
that well over a fifth of them are cut or partly occluded; no target is less than
``MIN_VISIBLE`` visible. Distractors that are not targets (lines, rings, crosses, zigzags,
arcs, blobs) are drawn under the targets.

Boxes: the axis-aligned box of the object's *full* outline (occluded parts included),
clipped to the image, in continuous 0-based pixel coordinates rounded to 0.01 px. Objects
are listed in drawing order (a later object may cover an earlier one).

Layout written (one physical copy of the images, read by all three loaders)::

    DIR/images/{train,val}/000000.png            the images (PNG, lossless)
    DIR/labels/{train,val}/000000.txt            text format: "cls xc yc w h" normalised, cls 0-based
    DIR/shapes.names, DIR/train.txt, DIR/val.txt, DIR/shapes.data
                                                 text format; the lists hold image paths relative
                                                 to DIR ("images/train/000000.png")
    DIR/VOC/JPEGImages -> ../images              a relative symlink (a copy where the file system
                                                 has no symlinks); survives `cp -r`
    DIR/VOC/Annotations/{train,val}/000000.xml   VOC XML (boxes 1-based: x + 1)
    DIR/VOC/ImageSets/Main/{train,val}.txt       VOC ids, e.g. "train/000000"
    DIR/annotations/instances_{train,val}.json   COCO (category ids 1..5; file_name relative
                                                 to DIR/images, e.g. "train/000000.png")
    DIR/MANIFEST.json                            seed, counts, version, statistics, time

    VOCDataset(DIR / "VOC", "train", class_names=SHAPES_CLASS_NAMES)
    COCODataset(DIR / "images", DIR / "annotations/instances_train.json")
    TextDataset(DIR / "shapes.data", "train")      # or "valid"

The dataset is written into a temporary folder beside DIR and renamed at the end, so an interrupted run
never leaves a half dataset that looks complete.
"""
from __future__ import annotations

import json
import logging
import math
import shutil
import time
import xml.etree.ElementTree as ET
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import cast

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from tqdm.auto import tqdm

from ssdlab.errors import DataError
from ssdlab.files import check_output_folder, staged_folder

log = logging.getLogger(__name__)

SHAPE_CLASSES = ("circle", "square", "triangle", "star", "hexagon")
SHAPES_CLASS_NAMES = ("__background__",) + SHAPE_CLASSES
DISTRACTOR_KINDS = ("line", "ring", "cross", "zigzag", "arc", "blob")
VERSION = 1
SPLITS = {"train": 0, "val": 1}
TRAIN_IMAGES = 16000              # the course's training split: 4000 overfit (train 0.94 vs val 0.84 mAP)
SIDE_RANGE = (128, 192)          # image width and height, inclusive
SIZE_RANGE = (0.08, 0.60)        # object size / shorter image side, log-uniform
ASPECT_RANGE = (2 / 3, 3 / 2)    # width/height stretch before rotation, log-uniform
P_NOISE, NOISE_MAX = 0.5, 6.0    # share of images with pixel noise; its sigma in [1, NOISE_MAX]
MIN_VISIBLE = 0.3                # every target keeps at least this share of its area visible
CUT_BELOW = 0.98                 # "cut by the border": less than this share inside the image
OCCLUDED_FROM = 0.05             # "occluded": at least this share of its in-image pixels covered
P_CUT, P_OVERLAP = 0.2, 0.25     # placement modes that create cut and occluded targets


@dataclass
class ShapeObject:
    """One target: class index into SHAPE_CLASSES, outline, clipped box and visibility."""

    label: int
    polygon: np.ndarray
    box: tuple[float, float, float, float]
    visible: float
    cut: bool
    occluded: bool


@dataclass
class Scene:
    """One rendered image with its targets (in drawing order) and distractor kinds."""

    image: np.ndarray
    objects: list[ShapeObject] = field(default_factory=list)
    distractors: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- geometry

def unit_polygon(name: str, rng: np.random.Generator) -> np.ndarray:
    """The outline of a shape class as [K, 2] (x, y) points around the origin, radius ~1."""
    if name == "circle":
        angles = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        return np.stack([np.cos(angles), np.sin(angles)], 1)
    if name == "square":
        return np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=float)
    corners = {"triangle": 3, "hexagon": 6, "star": 10}[name]
    angles = np.linspace(0, 2 * np.pi, corners, endpoint=False) - np.pi / 2
    radius = np.ones(corners)
    if name == "star":
        radius[1::2] = rng.uniform(0.38, 0.5)
    return np.stack([radius * np.cos(angles), radius * np.sin(angles)], 1)


def place(unit: np.ndarray, size: float, aspect: float, angle: float) -> np.ndarray:
    """Stretch, rotate and scale a unit outline so its box's longer side is size, centred on 0."""
    points = unit * np.array([math.sqrt(aspect), 1 / math.sqrt(aspect)])
    c, s = math.cos(angle), math.sin(angle)
    points = points @ np.array([[c, s], [-s, c]])
    low, high = points.min(0), points.max(0)
    return (points - (low + high) / 2) * (size / (high - low).max())


def polygon_area(points: np.ndarray) -> float:
    """Area of a simple polygon (shoelace formula); 0 for an empty one."""
    if len(points) < 3:
        return 0.0
    x, y = points[:, 0], points[:, 1]
    return 0.5 * abs(float(x[:-1] @ y[1:] - y[:-1] @ x[1:] + x[-1] * y[0] - y[-1] * x[0]))


def clip_polygon(points: np.ndarray, width: float, height: float) -> np.ndarray:
    """The part of a polygon inside [0, width] x [0, height] (Sutherland-Hodgman)."""
    kept = [tuple(p) for p in points.tolist()]
    for axis, limit, sign in ((0, 0.0, 1), (0, width, -1), (1, 0.0, 1), (1, height, -1)):
        polygon, kept = kept, []
        for start, end in zip(polygon, polygon[1:] + polygon[:1]):
            start_in = sign * (start[axis] - limit) >= 0
            end_in = sign * (end[axis] - limit) >= 0
            if start_in != end_in:
                t = (limit - start[axis]) / (end[axis] - start[axis])
                kept.append((start[0] + t * (end[0] - start[0]), start[1] + t * (end[1] - start[1])))
            if end_in:
                kept.append(end)
    return np.array(kept, dtype=float).reshape(-1, 2)


def clipped_box(points: np.ndarray, width: int, height: int) -> tuple[float, float, float, float]:
    """The outline's axis-aligned box clipped to the image, rounded to 0.01 px."""
    x1, y1 = np.maximum(points.min(0), 0)
    x2, y2 = np.minimum(points.max(0), [width, height])
    return cast("tuple[float, float, float, float]", tuple(round(float(v), 2) for v in (x1, y1, x2, y2)))


def rasterize(points: np.ndarray, width: int, height: int) -> np.ndarray:
    """Boolean HxW mask of the pixels whose centres lie inside the polygon."""
    mask = Image.new("L", (width, height), 0)
    ImageDraw.Draw(mask).polygon([tuple(p) for p in points - 0.5], fill=1)
    return np.asarray(mask, dtype=bool)


# ----------------------------------------------------------------------------- background

def background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A float32 HxWx3 texture: a colour gradient plus random stripes and smooth blotches."""
    ys = np.arange(height, dtype=np.float32)[:, None]
    xs = np.arange(width, dtype=np.float32)[None, :]
    angle = rng.uniform(0, 2 * np.pi)
    ramp = xs * np.float32(math.cos(angle)) + ys * np.float32(math.sin(angle))
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
    start, stop = rng.uniform(0, 255, 3).astype(np.float32), rng.uniform(0, 255, 3).astype(np.float32)
    image = start + ramp[..., None] * (stop - start)
    if rng.random() < 0.5:
        period, phase, theta = rng.uniform(5, 30), rng.uniform(0, 2 * np.pi), rng.uniform(0, np.pi)
        step = np.float32(2 * np.pi / period)
        wave = np.sin((xs * np.float32(math.cos(theta)) + ys * np.float32(math.sin(theta))) * step + np.float32(phase))
        image += wave[..., None] * rng.uniform(-40, 40, 3).astype(np.float32)
    if rng.random() < 0.6:
        cells = rng.integers(3, 10)
        small = Image.fromarray(rng.integers(0, 256, (cells, cells, 3), dtype=np.uint8))
        bilinear = Image.BILINEAR  # type: ignore[attr-defined]  # set at import; Image.Resampling needs Pillow 9.1
        blotch = np.asarray(small.resize((width, height), bilinear), dtype=np.float32)
        image += (blotch - 128) * np.float32(rng.uniform(0.15, 0.45))
    return image


def random_colour(rng: np.random.Generator, avoid: np.ndarray) -> tuple[int, int, int]:
    """An RGB colour that stands out from the colour avoid (tries a few times)."""
    colour = rng.integers(0, 256, 3)
    for _ in range(8):
        if np.abs(colour - avoid).sum() > 120:
            break
        colour = rng.integers(0, 256, 3)
    return cast("tuple[int, int, int]", tuple(int(c) for c in colour))


# ----------------------------------------------------------------------------- distractors

def draw_distractor(draw: ImageDraw.ImageDraw, rng: np.random.Generator, width: int, height: int) -> str:
    """Draw one non-target shape (line, ring, cross, zigzag, arc or blob); return its kind."""
    kind = DISTRACTOR_KINDS[rng.integers(len(DISTRACTOR_KINDS))]
    side = min(width, height)
    size = side * math.exp(rng.uniform(math.log(0.1), math.log(0.5)))
    cx, cy = rng.uniform(0, width), rng.uniform(0, height)
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    thick = int(rng.integers(1, 5))
    if kind == "line":
        angle = rng.uniform(0, np.pi)
        dx, dy = size * math.cos(angle), size * math.sin(angle)
        draw.line([(cx - dx, cy - dy), (cx + dx, cy + dy)], fill=colour, width=thick)
    elif kind in ("ring", "arc"):
        r = size / 2
        box = [cx - r, cy - r * rng.uniform(0.6, 1.0), cx + r, cy + r * rng.uniform(0.6, 1.0)]
        start = rng.uniform(0, 360)
        end = start + (360 if kind == "ring" else rng.uniform(60, 240))
        draw.arc(box, start, end, fill=colour, width=thick + 1)
    elif kind == "cross":
        angle, r = rng.uniform(0, np.pi / 2), size / 2
        for a in (angle, angle + np.pi / 2):
            dx, dy = r * math.cos(a), r * math.sin(a)
            draw.line([(cx - dx, cy - dy), (cx + dx, cy + dy)], fill=colour, width=thick + 1)
    elif kind == "zigzag":
        xs = cx + np.linspace(-size / 2, size / 2, int(rng.integers(4, 7)))
        ys = cy + rng.uniform(-size / 4, size / 4, len(xs))
        draw.line(list(zip(xs.tolist(), ys.tolist())), fill=colour, width=thick, joint="curve")
    else:  # blob: an irregular outline, lumpier than any target
        angles = np.sort(rng.uniform(0, 2 * np.pi, 7))
        radius = size / 2 * rng.uniform(0.3, 1.0, 7)
        points = np.stack([cx + radius * np.cos(angles), cy + radius * np.sin(angles)], 1)
        draw.polygon([tuple(p) for p in points], fill=colour)
    return kind


# ----------------------------------------------------------------------------- targets

def candidate_centre(rng: np.random.Generator, extent: np.ndarray, width: int, height: int,
                     placed: list[ShapeObject]) -> np.ndarray:
    """Where to put a new object: inside, across a border, or over an earlier object."""
    half = extent / 2
    mode = rng.random()
    if mode < P_CUT:
        axis, low_side = int(rng.integers(2)), rng.random() < 0.5
        limit = (width, height)[axis]
        inside = rng.uniform(0.35, 0.85) * extent[axis]        # length of the box inside the image
        centre = rng.uniform(half, np.maximum(np.array([width, height]) - half, half + 1e-3))
        centre[axis] = inside - half[axis] if low_side else limit - inside + half[axis]
        return centre
    if mode < P_CUT + P_OVERLAP and placed:
        other = placed[rng.integers(len(placed))].polygon
        other_centre = (other.min(0) + other.max(0)) / 2
        reach = (np.ptp(other, 0).max() + extent.max()) / 2 * rng.uniform(0.4, 0.9)
        angle = rng.uniform(0, 2 * np.pi)
        return other_centre + reach * np.array([math.cos(angle), math.sin(angle)])
    high = np.maximum(np.array([width, height]) - half, half + 1e-3)
    return rng.uniform(half, high)


def try_target(rng: np.random.Generator, width: int, height: int, placed: list[ShapeObject],
               visible_masks: list[np.ndarray], full_masks: list[np.ndarray]):
    """Draw one candidate target; return (object, mask) when every target stays visible enough."""
    label = int(rng.integers(len(SHAPE_CLASSES)))
    unit = unit_polygon(SHAPE_CLASSES[label], rng)
    size = min(width, height) * math.exp(rng.uniform(*np.log(SIZE_RANGE)))
    aspect = math.exp(rng.uniform(*np.log(ASPECT_RANGE)))
    angle = rng.uniform(0, 2 * np.pi)
    shape = place(unit, size, aspect, angle)
    centre = candidate_centre(rng, np.ptp(shape, 0), width, height, placed)
    polygon = shape + centre
    inside = polygon_area(clip_polygon(polygon, width, height)) / polygon_area(polygon)
    mask = rasterize(polygon, width, height)
    if inside < MIN_VISIBLE or mask.sum() < 12:
        return None
    for obj, visible, full in zip(placed, visible_masks, full_masks):
        still = np.count_nonzero(visible & ~mask) / max(int(np.count_nonzero(full)), 1)
        if obj.visible * still < MIN_VISIBLE:
            return None
    box = clipped_box(polygon, width, height)
    return ShapeObject(label, polygon, box, float(inside), bool(inside < CUT_BELOW), False), mask


def add_targets(rng: np.random.Generator, width: int, height: int) -> list[ShapeObject]:
    """Place 1-6 targets; update every earlier target's visibility and occlusion flag."""
    wanted = int(rng.integers(1, 7))
    placed: list[ShapeObject] = []
    full_masks: list[np.ndarray] = []
    visible_masks: list[np.ndarray] = []
    for _ in range(wanted):
        for _attempt in range(20):
            result = try_target(rng, width, height, placed, visible_masks, full_masks)
            if result is not None:
                break
        else:
            break  # no room left for another target
        obj, mask = result
        for i, earlier in enumerate(placed):
            visible_masks[i] = visible_masks[i] & ~mask
            shown = np.count_nonzero(visible_masks[i]) / max(int(np.count_nonzero(full_masks[i])), 1)
            earlier.occluded = bool(shown <= 1 - OCCLUDED_FROM)
        placed.append(obj)
        full_masks.append(mask)
        visible_masks.append(mask.copy())
    for obj, visible, full in zip(placed, visible_masks, full_masks):
        obj.visible = float(obj.visible * np.count_nonzero(visible) / max(int(np.count_nonzero(full)), 1))
    return placed


def draw_target(draw: ImageDraw.ImageDraw, rng: np.random.Generator, obj: ShapeObject, base: np.ndarray) -> None:
    """Fill a target with a colour that stands out from the background under it, maybe outlined."""
    x1, y1, x2, y2 = (int(v) for v in obj.box)
    patch = base[y1:max(y2, y1 + 1), x1:max(x2, x1 + 1)]
    fill = random_colour(rng, patch.reshape(-1, 3).mean(0))
    outline = tuple(int(c * 0.5) for c in fill) if rng.random() < 0.5 else None
    draw.polygon([tuple(p) for p in obj.polygon - 0.5], fill=fill, outline=outline)


def make_scene(seed: int, split: str, index: int) -> Scene:
    """Render image `index` of `split` for `seed` (pure: the same arguments give the same scene)."""
    rng = np.random.default_rng([seed, SPLITS[split], index])
    width, height = (int(v) for v in rng.integers(SIDE_RANGE[0], SIDE_RANGE[1] + 1, 2))
    base = background(rng, width, height)
    canvas = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    distractors = [draw_distractor(draw, rng, width, height) for _ in range(int(rng.integers(1, 5)))]
    objects = add_targets(rng, width, height)
    for obj in objects:
        draw_target(draw, rng, obj, base)
    if rng.random() < 0.25:
        canvas = canvas.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.8)))
    image = np.asarray(canvas, dtype=np.float32)
    if rng.random() < P_NOISE:
        image += rng.standard_normal(image.shape, dtype=np.float32) * np.float32(rng.uniform(1, NOISE_MAX))
    image = np.clip(image, 0, 255).astype(np.uint8)
    return Scene(image, objects, distractors)


# ----------------------------------------------------------------------------- writers

def text_label_lines(objects: list[ShapeObject], width: int, height: int) -> str:
    """The text-format label file: 'cls xc yc w h' normalised, 7 decimals."""
    lines = []
    for obj in objects:
        x1, y1, x2, y2 = obj.box
        lines.append(f"{obj.label} {(x1 + x2) / 2 / width:.7f} {(y1 + y2) / 2 / height:.7f} "
                     f"{(x2 - x1) / width:.7f} {(y2 - y1) / height:.7f}\n")
    return "".join(lines)


def voc_xml(image_file: str, objects: list[ShapeObject], width: int, height: int) -> bytes:
    """A VOC annotation; box corners are 1-based (0-based continuous + 1) with 2 decimals."""
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "VOC"
    ET.SubElement(root, "filename").text = image_file
    size = ET.SubElement(root, "size")
    for key, value in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, key).text = str(value)
    for obj in objects:
        node = ET.SubElement(root, "object")
        ET.SubElement(node, "name").text = SHAPE_CLASSES[obj.label]
        ET.SubElement(node, "truncated").text = str(int(obj.cut))
        ET.SubElement(node, "occluded").text = str(int(obj.occluded))
        ET.SubElement(node, "difficult").text = "0"
        bndbox = ET.SubElement(node, "bndbox")
        for key, coordinate in zip(("xmin", "ymin", "xmax", "ymax"), obj.box):
            ET.SubElement(bndbox, key).text = f"{coordinate + 1:.2f}"
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8")


def write_sample(task: tuple[str, int, str, int]) -> dict:
    """Render one image and write its PNG, text label and VOC XML; return its COCO/statistics record."""
    root, seed, split, index = task
    scene = make_scene(seed, split, index)
    height, width = scene.image.shape[:2]
    stem = f"{split}/{index:06d}"
    out = Path(root)
    Image.fromarray(scene.image).save(out / "images" / f"{stem}.png", compress_level=1)
    (out / "labels" / f"{stem}.txt").write_text(text_label_lines(scene.objects, width, height))
    (out / "VOC/Annotations" / f"{stem}.xml").write_bytes(voc_xml(f"{stem}.png", scene.objects, width, height))
    return {"file": f"{stem}.png", "width": width, "height": height,
            "boxes": [list(o.box) for o in scene.objects], "labels": [o.label for o in scene.objects],
            "cut": sum(o.cut for o in scene.objects), "occluded": sum(o.occluded for o in scene.objects),
            "hard": sum(o.cut or o.occluded for o in scene.objects), "distractors": len(scene.distractors)}


def coco_json(records: list[dict]) -> dict:
    """COCO instances for one split: category ids 1..5, bbox = [x, y, w, h] in pixels."""
    images: list[dict] = []
    annotations: list[dict] = []
    for image_id, rec in enumerate(records, start=1):
        images.append({"id": image_id, "file_name": rec["file"], "width": rec["width"], "height": rec["height"]})
        for (x1, y1, x2, y2), label in zip(rec["boxes"], rec["labels"]):
            w, h = round(x2 - x1, 2), round(y2 - y1, 2)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": label + 1,
                                "bbox": [x1, y1, w, h], "area": round(w * h, 4), "iscrowd": 0})
    categories = [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(SHAPE_CLASSES)]
    return {"info": {"description": "ssdlab synthetic shapes"}, "images": images,
            "annotations": annotations, "categories": categories}


def split_stats(records: list[dict]) -> dict:
    """Counts of images, objects, cut/occluded objects and distractors of one split."""
    objects = sum(len(r["labels"]) for r in records)
    hard = sum(r["hard"] for r in records)
    return {"images": len(records), "objects": objects, "cut": sum(r["cut"] for r in records),
            "occluded": sum(r["occluded"] for r in records), "cut_or_occluded_share": hard / max(objects, 1),
            "distractors": sum(r["distractors"] for r in records)}


def write_split(tmp: Path, split: str, records: list[dict]) -> None:
    """Write the split's lists (text format and VOC) and its COCO json."""
    (tmp / f"{split}.txt").write_text("".join(f"images/{r['file']}\n" for r in records))
    (tmp / "VOC/ImageSets/Main" / f"{split}.txt").write_text(
        "".join(f"{r['file'][:-4]}\n" for r in records))
    (tmp / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco_json(records)))


def write_dataset(tmp: Path, n_train: int, n_val: int, seed: int, workers: int, progress: bool = False) -> dict:
    """Generate every file of the dataset under tmp; return the per-split statistics."""
    for sub in ("images", "VOC/Annotations", "labels"):
        for split in SPLITS:
            (tmp / sub / split).mkdir(parents=True)
    (tmp / "VOC/ImageSets/Main").mkdir(parents=True)
    (tmp / "annotations").mkdir()
    counts = {"train": n_train, "val": n_val}
    tasks = [(str(tmp), seed, split, i) for split in SPLITS for i in range(counts[split])]
    with ProcessPoolExecutor(workers) if workers > 1 else nullcontext() as pool:
        mapped = pool.map(write_sample, tasks, chunksize=32) if pool else map(write_sample, tasks)
        results = list(tqdm(mapped, total=len(tasks), desc="shapes", unit="img", disable=not progress, leave=False))
    stats = {}
    for split in SPLITS:
        records = [r for r, t in zip(results, tasks) if t[2] == split]
        write_split(tmp, split, records)
        stats[split] = split_stats(records)
    (tmp / "shapes.names").write_text("".join(f"{name}\n" for name in SHAPE_CLASSES))
    (tmp / "shapes.data").write_text(
        f"classes= {len(SHAPE_CLASSES)}\ntrain= train.txt\nvalid= val.txt\nnames= shapes.names\n"
        "images= images\nlabels= labels\n")
    link_voc_images(tmp)
    return stats


def link_voc_images(root: Path) -> None:
    """Make VOC/JPEGImages a relative symlink to images/ (a copy where symlinks are not supported)."""
    link = root / "VOC" / "JPEGImages"
    try:
        link.symlink_to(Path("..") / "images", target_is_directory=True)
    except OSError as err:
        log.warning("cannot create the symlink %s (%s); copying the images for the VOC view", link, err)
        shutil.copytree(root / "images", link)


# ----------------------------------------------------------------------------- entry point

def read_manifest(out: Path) -> dict | None:
    """The MANIFEST.json of a shapes dataset folder, or None when absent or unreadable."""
    try:
        return json.loads((out / "MANIFEST.json").read_text())
    except (OSError, ValueError):
        return None


def is_complete(out: Path, n_train: int, n_val: int, seed: int) -> bool:
    """True when out already holds this exact dataset (same version, seed and counts)."""
    manifest = read_manifest(out) or {}
    return bool(manifest) and manifest.get("format") == "ssdlab-shapes" and all(
        manifest.get(k) == v for k, v in (("version", VERSION), ("seed", seed),
                                          ("n_train", n_train), ("n_val", n_val)))


def check_replaceable(out: Path) -> None:
    """Refuse to overwrite a folder that is neither empty nor an ssdlab shapes dataset, or to write where no file
    can be made."""
    check_output_folder(out, "--out", DataError, replaced=True)  # also: out an existing file
    if out.is_dir() and any(out.iterdir()) and (read_manifest(out) or {}).get("format") != "ssdlab-shapes":
        raise DataError(f"{out} exists and is not an ssdlab shapes dataset (no valid MANIFEST.json); "
                        "choose another --out or remove the folder")


def generate_shapes(out: Path, n_train: int = TRAIN_IMAGES, n_val: int = 500, seed: int = 0, workers: int = 2,
                    progress: bool = False) -> Path:
    """Write the shapes dataset to out (atomically) and return out; reuse it when already complete."""
    out = Path(out)
    if n_train < 1 or n_val < 1:
        raise DataError(f"shapes dataset {out}: --train and --val must be at least 1 (got {n_train}, {n_val})")
    if is_complete(out, n_train, n_val, seed):
        log.info("shapes dataset %s is complete (seed %d, %d train, %d val); not regenerating",
                 out, seed, n_train, n_val)
        return out
    check_replaceable(out)
    with staged_folder(out) as tmp:
        start = time.perf_counter()
        stats = write_dataset(tmp, n_train, n_val, seed, workers, progress)
        seconds = time.perf_counter() - start
        manifest = {"format": "ssdlab-shapes", "version": VERSION, "seed": seed, "n_train": n_train,
                    "n_val": n_val, "classes": list(SHAPE_CLASSES), "stats": stats,
                    "generation_seconds": round(seconds, 2), "workers": workers,
                    "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        (tmp / "MANIFEST.json").write_text(json.dumps(manifest, indent=2))
    log.info("wrote shapes dataset %s (%d train, %d val) in %.1f s", out, n_train, n_val, seconds)
    return out
