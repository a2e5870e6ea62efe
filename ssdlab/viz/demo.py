"""Detect objects in a folder of images, draw them and time each image."""
from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from ssdlab.config import CfgNode
from ssdlab.data.base import read_image
from ssdlab.data.transforms import build_transforms
from ssdlab.errors import DataError
from ssdlab.files import check_output_folder, staged
from ssdlab.viz.draw import draw_detections

if TYPE_CHECKING:
    from ssdlab.model.ssd import SSD

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}


def image_files(folder: Path) -> list[Path]:
    """The images of a folder, sorted; a DataError when there are none."""
    if folder.is_file():
        raise DataError(f"{folder} is a file; give the folder that holds the images (every image in it is drawn)")
    if not folder.is_dir():
        raise DataError(f"image folder {folder} does not exist")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"{folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return files


@torch.no_grad()
def detect(model: nn.Module, image: np.ndarray, cfg: CfgNode, transform=None) -> dict:
    """Detections on one RGB image, boxes in its own pixels."""
    transform = transform or build_transforms(cfg, is_train=False)
    tensor = transform(image, None, None)[0].unsqueeze(0)
    device = next(model.parameters()).device
    det = model(tensor.to(device))[0]
    height, width = image.shape[:2]
    scale = torch.tensor([width, height, width, height], dtype=torch.float32) / cfg.INPUT.IMAGE_SIZE
    return {"boxes": det["boxes"].cpu() * scale, "labels": det["labels"].cpu(), "scores": det["scores"].cpu()}


def draw_one(model: SSD, cfg: CfgNode, transform, path: Path, target: Path, score_threshold: float) -> dict:
    """Detect on one image, draw it into target as PNG; its record (objects, ms, FPS)."""
    image = read_image(path, advice="replace or remove it; nothing was written to --out")
    start = time.perf_counter()
    det = detect(model, image, cfg, transform)
    seconds = time.perf_counter() - start
    keep = det["scores"] > score_threshold
    drawn = draw_detections(image, det["boxes"][keep], det["labels"][keep], det["scores"][keep], model.class_names)
    drawn.save(target, format="PNG")
    return {"image": path.name, "objects": int(keep.sum()), "ms": seconds * 1000, "fps": 1 / seconds}


def run_demo(model: SSD, cfg: CfgNode, images: Path, out: Path, score_threshold: float = 0.4) -> list[dict]:
    """Draw detections above score_threshold for every image in images/ into out/; one record per image.

    All or nothing: the drawings are made in temporary files and renamed into out/ when every image is done.
    """
    files = image_files(images)
    check_output_folder(out, "--out", DataError)
    model.eval()
    transform = build_transforms(cfg, is_train=False)
    targets = [out / f"{path.stem}.png" for path in files]
    with staged(*targets) as temps:
        records = [draw_one(model, cfg, transform, path, temp, score_threshold) for path, temp in zip(files, temps)]
    return [{**record, "out": str(target)} for record, target in zip(records, targets)]
