"""Where a detector goes wrong: what became of each object, by size, and what each confident detection was.

Only detections scoring at least ``score_threshold`` count. Each (non-difficult) object is
  found        a detection of its class overlaps it with IoU >= 0.5;
  wrong class  none of its class does, but one of another class does (a confusion);
  poor box     one of its class overlaps it with 0.3 <= IoU < 0.5 (a localisation error);
  missed       nothing of the above.
Each detection, taken in score order per image as VOC matches them, is
  correct      the object of its class it overlaps most (IoU >= 0.5) was not yet taken;
  duplicate    that object was already taken by a higher-scoring detection;
  wrong class  it overlaps an object of another class with IoU >= 0.5;
  poor box     its best IoU with any object is between 0.1 and 0.5;
  background   it overlaps no object (IoU < 0.1).
Detections whose best object of their class is difficult are left out, as in VOC. An object's
size is the longer side of its box over the image's shorter side (how the shapes data draws sizes).
"""
from __future__ import annotations

import numpy as np
import torch
from torchvision.ops import box_iou

from ssdlab.engine.evaluate import Predictions, _per_image

OUTCOMES = ("found", "wrong class", "poor box", "missed")
KINDS = ("correct", "duplicate", "wrong class", "poor box", "background")
SIZE_BINS = (0.12, 0.2, 0.35)
MATCH_IOU, POOR_IOU, TOUCH_IOU = 0.5, 0.3, 0.1


def size_label(relative: float, bins: tuple[float, ...] = SIZE_BINS) -> str:
    """The name of the size bin a relative object size falls in ('< 0.12', '0.12-0.2', ..., '>= 0.35')."""
    for low, high in zip((0.0, *bins), bins):
        if relative < high:
            return f"< {high:g}" if low == 0 else f"{low:g}-{high:g}"
    return f">= {bins[-1]:g}"


def object_outcome(iou: np.ndarray, same_class: np.ndarray) -> str:
    """What became of one object, from its IoU with each confident detection and whether each has its class."""
    if (iou[same_class] >= MATCH_IOU).any():
        return "found"
    if (iou[~same_class] >= MATCH_IOU).any():
        return "wrong class"
    return "poor box" if (iou[same_class] >= POOR_IOU).any() else "missed"


def detection_kinds(iou: np.ndarray, same_class: np.ndarray, difficult: np.ndarray) -> list[str]:
    """The kind of each detection of one image ([D, G] IoU and class agreement, detections in score order)."""
    taken = np.zeros(iou.shape[1], dtype=bool)
    kinds = []
    for d in range(iou.shape[0]):
        own = np.where(same_class[d], iou[d], -1.0)
        best = int(own.argmax()) if own.size else -1
        if best >= 0 and own[best] >= MATCH_IOU:
            if not difficult[best]:
                kinds.append("duplicate" if taken[best] else "correct")
                taken[best] = True
        else:
            overlap = iou[d].max() if iou.shape[1] else 0.0
            kinds.append("wrong class" if overlap >= MATCH_IOU else "poor box" if overlap >= TOUCH_IOU else "background")
    return kinds


def diagnose(dataset, predictions: Predictions, score_threshold: float = 0.3,
             bins: tuple[float, ...] = SIZE_BINS) -> dict:
    """{"objects": {size bin: {outcome: count}}, "detections": {kind: count}, "score_threshold"} over a dataset."""
    labels = [size_label(x, bins) for x in (0.0, *bins)]
    objects = {label: dict.fromkeys(OUTCOMES, 0) for label in labels}
    kinds = dict.fromkeys(KINDS, 0)
    for i, (det_boxes, det_labels, det_scores) in enumerate(_per_image(predictions, len(dataset))):
        order = np.argsort(-det_scores, kind="stable")
        order = order[det_scores[order] >= score_threshold]
        gt_boxes, gt_labels, difficult = dataset.get_annotation(i)
        gt_boxes = np.asarray(gt_boxes, np.float32).reshape(-1, 4)
        gt_labels, difficult = np.asarray(gt_labels).reshape(-1), np.asarray(difficult, bool).reshape(-1)
        iou = box_iou(torch.from_numpy(det_boxes[order]), torch.from_numpy(gt_boxes)).numpy()
        same = det_labels[order][:, None] == gt_labels[None, :]
        for kind in detection_kinds(iou, same, difficult):
            kinds[kind] += 1
        info = dataset.get_img_info(i)
        shorter = min(info["width"], info["height"])
        for g in np.flatnonzero(~difficult):
            relative = float(max(gt_boxes[g, 2] - gt_boxes[g, 0], gt_boxes[g, 3] - gt_boxes[g, 1])) / shorter
            objects[size_label(relative, bins)][object_outcome(iou[:, g], same[:, g])] += 1
    return {"objects": objects, "detections": kinds, "score_threshold": score_threshold}


def found_percent(result: dict) -> dict[str, float | None]:
    """Per size bin, the share of objects found (%), None for an empty bin."""
    return {label: 100 * counts["found"] / sum(counts.values()) if sum(counts.values()) else None
            for label, counts in result["objects"].items()}


def format_diagnosis(result: dict) -> str:
    """The diagnosis as two text tables: objects by size and outcome, then detections by kind."""
    width = max(len(o) for o in OUTCOMES) + 2
    lines = [f"objects at detections scoring >= {result['score_threshold']:g} (size: longer box side / "
             "shorter image side)", "size".ljust(10) + "".join(o.rjust(width) for o in OUTCOMES) + "found %".rjust(10)]
    shares = found_percent(result)
    for label, counts in result["objects"].items():
        share = "-" if shares[label] is None else f"{shares[label]:.1f}"
        lines.append(label.ljust(10) + "".join(str(counts[o]).rjust(width) for o in OUTCOMES) + share.rjust(10))
    lines.append("detections: " + ", ".join(f"{k} {n}" for k, n in result["detections"].items()))
    return "\n".join(lines)
