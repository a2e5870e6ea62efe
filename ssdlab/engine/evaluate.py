"""Detection metrics: VOC mAP@0.5 (area or 11-point) and COCO AP through pycocotools.

Predictions are given per dataset index, as ``{i: {"boxes", "labels", "scores"}}`` or as a
list with one such dict per image (numpy arrays or tensors). Boxes are xyxy in pixels of the
ORIGINAL image, labels are 1..C-1. Ground truth comes from ``dataset.get_annotation(i)``.

VOC algorithm (the devkit's, which the original SSD code's numbers use), per class:
  1. sort all detections of the class by score (highest first);
  2. each detection takes the ground-truth box (same image, same class) of highest IoU;
     if that IoU >= iou_threshold: a difficult box -> the detection is ignored (neither TP
     nor FP); an unmatched box -> TP (the box is now matched); an already matched box -> FP
     (a duplicate); below the threshold -> FP;
  3. AP from the precision/recall curve: the area under its monotone envelope ("area", the
     original SSD code's choice) or the mean of the envelope at recall 0, 0.1, ..., 1 ("11-point", VOC2007).
Boxes use continuous coordinates (area = (x2 - x1) * (y2 - y1)), not the devkit's "+1 pixel".
A class with no (non-difficult) ground truth has AP nan and is left out of the mean.

``agreement`` compares two detectors instead of one detector with the ground truth (a quantized model
against its float or integer twin).
"""
from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torchvision.ops import box_iou

from ssdlab.errors import DataError
from ssdlab.files import write_json

Predictions = dict[int, dict] | Sequence[dict]
COCO_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def _numpy(values, dtype, shape: tuple[int, ...]) -> np.ndarray:
    """A numpy array of the given dtype and shape from a tensor, array or list."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=dtype).reshape(shape)


def _per_image(predictions: Predictions, num_images: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(boxes [K, 4], labels [K], scores [K]) for every dataset index; missing images get none."""
    if isinstance(predictions, dict):
        outside = [i for i in predictions if not 0 <= int(i) < num_images]
        if outside:
            raise DataError(f"predictions for image index {outside[0]} but the dataset has {num_images} "
                            "images; key predictions by dataset index 0..len(dataset)-1")
        items = [predictions.get(i) for i in range(num_images)]
    else:
        if len(predictions) != num_images:
            raise DataError(f"{len(predictions)} predictions for a dataset of {num_images} images; "
                            "give one dict per image in dataset order (or a dict keyed by index)")
        items = list(predictions)
    empty = (np.zeros((0, 4), np.float32), np.zeros(0, np.int64), np.zeros(0, np.float32))
    return [empty if p is None else (_numpy(p["boxes"], np.float32, (-1, 4)),
                                     _numpy(p["labels"], np.int64, (-1,)),
                                     _numpy(p["scores"], np.float32, (-1,))) for p in items]


def voc_ap(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool) -> float:
    """AP of a PR curve: area under the monotone precision envelope, or the VOC2007 11-point mean."""
    recall, precision = np.asarray(recall, np.float64), np.asarray(precision, np.float64)
    if use_07_metric:
        points = [precision[recall >= t].max() if (recall >= t).any() else 0.0
                  for t in np.linspace(0, 1, 11)]
        return float(np.mean(points))
    rec = np.concatenate([[0.0], recall, [1.0]])
    prec = np.concatenate([[0.0], precision, [0.0]])
    envelope = np.maximum.accumulate(prec[::-1])[::-1]
    steps = np.flatnonzero(rec[1:] != rec[:-1])
    return float(np.sum((rec[steps + 1] - rec[steps]) * envelope[steps + 1]))


def _best_gt(gt_boxes: np.ndarray, det_boxes: np.ndarray, iou_threshold: float) -> np.ndarray:
    """For each detection, the index of its highest-IoU GT box, or -1 when that IoU < threshold."""
    if not (len(gt_boxes) and len(det_boxes)):
        return np.full(len(det_boxes), -1, dtype=np.int64)
    best_iou, best_gt = box_iou(torch.from_numpy(det_boxes), torch.from_numpy(gt_boxes)).max(dim=1)
    return np.where(best_iou.numpy() >= iou_threshold, best_gt.numpy(), -1)


def _class_pr(images: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
              iou_threshold: float) -> tuple[np.ndarray, np.ndarray, int]:
    """Recall, precision and #non-difficult GT of one class from per-image (gt, difficult, det, score)."""
    score_parts: list[np.ndarray] = []
    hit_parts: list[np.ndarray] = []
    difficult_parts: list[np.ndarray] = []
    start = 0
    for gt_boxes, gt_difficult, det_boxes, det_scores in images:
        best = _best_gt(gt_boxes, det_boxes, iou_threshold)
        score_parts.append(det_scores)
        hit_parts.append(np.where(best >= 0, best + start, -1))
        difficult_parts.append(gt_difficult)
        start += len(gt_boxes)
    scores, hits = np.concatenate(score_parts), np.concatenate(hit_parts)
    difficult = np.concatenate(difficult_parts).astype(bool)
    num_gt = int((~difficult).sum())
    matched = np.zeros(len(difficult), dtype=bool)
    outcome = []  # 1 = TP, 0 = FP; ignored detections are skipped
    for d in np.argsort(-scores, kind="stable"):
        gt = hits[d]
        if gt >= 0 and difficult[gt]:
            continue
        outcome.append(int(gt >= 0 and not matched[gt]))
        if gt >= 0:
            matched[gt] = True
    tp = np.cumsum(np.array(outcome, dtype=np.float64))
    fp = np.cumsum(1.0 - np.array(outcome, dtype=np.float64))
    recall = tp / num_gt if num_gt else np.full(len(tp), np.nan)
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return recall, precision, num_gt


def evaluate_voc(dataset, predictions: Predictions, iou_threshold: float = 0.5,
                 use_07_metric: bool = False) -> dict:
    """VOC mAP: {"metric", "map", "ap": {class: AP}, "pr": {class: (recall, precision)}, "num_gt"}."""
    num_classes = len(dataset.class_names)
    dets = _per_image(predictions, len(dataset))
    per_class: list[list] = [[] for _ in range(num_classes)]
    for i, (det_boxes, det_labels, det_scores) in enumerate(dets):
        if len(det_labels) and (det_labels.min() < 1 or det_labels.max() >= num_classes):
            raise DataError(f"predictions[{i}] has label {int(det_labels.max())} or {int(det_labels.min())}; "
                            f"labels must be 1..{num_classes - 1} for this dataset (0 is background)")
        gt_boxes, gt_labels, gt_difficult = dataset.get_annotation(i)
        gt_boxes = np.asarray(gt_boxes, np.float32).reshape(-1, 4)
        gt_labels, gt_difficult = np.asarray(gt_labels).reshape(-1), np.asarray(gt_difficult, bool).reshape(-1)
        for c in range(1, num_classes):
            g, d = gt_labels == c, det_labels == c
            per_class[c].append((gt_boxes[g], gt_difficult[g], det_boxes[d], det_scores[d]))
    result: dict[str, Any] = {"metric": f"VOC mAP@{iou_threshold:g} ({'11-point' if use_07_metric else 'area'})",
              "ap": {}, "pr": {}, "num_gt": {}}
    for c in range(1, num_classes):
        name = dataset.class_names[c]
        recall, precision, num_gt = _class_pr(per_class[c], iou_threshold)
        result["num_gt"][name] = num_gt
        result["pr"][name] = (recall, precision)
        result["ap"][name] = voc_ap(recall, precision, use_07_metric) if num_gt else float("nan")
    aps = [ap for ap in result["ap"].values() if not np.isnan(ap)]
    result["map"] = float(np.mean(aps)) if aps else float("nan")
    return result


def to_coco_gt(dataset) -> dict:
    """COCO-format ground truth of any DetectionDataset.

    Image ids are dataset indices, category ids are label ids (1..C-1), bbox is xywh and
    area = w * h (the box area; COCO's own files use mask areas, so APs/APm/APl may differ
    slightly from the official tools). Difficult objects get iscrowd=1, which makes COCOeval
    ignore detections on them instead of counting them as false positives.
    """
    images: list[dict] = []
    annotations: list[dict] = []
    for i in range(len(dataset)):
        info = dataset.get_img_info(i)
        images.append({"id": i, "height": int(info["height"]), "width": int(info["width"]),
                       "file_name": str(info["file"])})
        boxes, labels, difficult = dataset.get_annotation(i)
        for box, label, hard in zip(np.asarray(boxes, np.float64).reshape(-1, 4), labels, difficult):
            w, h = float(box[2] - box[0]), float(box[3] - box[1])
            annotations.append({"id": len(annotations) + 1,  # COCOeval treats id 0 as "unmatched"
                                "image_id": i, "category_id": int(label),
                                "bbox": [float(box[0]), float(box[1]), w, h], "area": w * h,
                                "iscrowd": int(bool(hard))})
    categories = [{"id": c, "name": name} for c, name in enumerate(dataset.class_names) if c > 0]
    return {"info": {}, "licenses": [], "images": images, "annotations": annotations,
            "categories": categories}


def to_coco_results(predictions: Predictions) -> list[dict]:
    """COCO results list [{"image_id", "category_id", "bbox" (xywh), "score"}] from predictions."""
    items = predictions.items() if isinstance(predictions, dict) else enumerate(predictions)
    results = []
    for i, pred in items:
        boxes = _numpy(pred["boxes"], np.float64, (-1, 4))
        labels = _numpy(pred["labels"], np.int64, (-1,))
        scores = _numpy(pred["scores"], np.float64, (-1,))
        for box, label, score in zip(boxes, labels, scores):
            results.append({"image_id": int(i), "category_id": int(label),
                            "bbox": [float(box[0]), float(box[1]), float(box[2] - box[0]),
                                     float(box[3] - box[1])],
                            "score": float(score)})
    return results


def with_dataset_ids(dataset, results: list[dict], truth: dict) -> tuple[list[dict], dict]:
    """Results and ground truth with a COCO dataset's own image and category ids, so the results file loads
    against its annotation file; other datasets (VOC, text, several sets) keep positions and class indices."""
    category = getattr(dataset, "label_to_category", None)
    if category is None:
        return results, truth
    image = dict(enumerate(dataset.ids))

    def own(item: dict) -> dict:
        return {**item, "image_id": image[item["image_id"]], "category_id": category[item["category_id"]]}

    truth = {**truth, "images": [{**info, "id": image[info["id"]]} for info in truth["images"]],
             "annotations": [own(a) for a in truth["annotations"]],
             "categories": [{**c, "id": category[c["id"]]} for c in truth["categories"]]}
    return [own(r) for r in results], truth


def ground_truth_json(results_json: str | Path) -> Path:
    """Where the ground truth of a results file goes: detections.json -> detections.gt.json."""
    path = Path(results_json)
    return path.with_name(f"{path.stem}.gt.json")


def evaluate_coco(dataset, predictions: Predictions, results_json: str | Path | None = None) -> dict:
    """COCO box AP with pycocotools: {"metric", "AP", "AP50", "AP75", "APs", "APm", "APl", "summary"}.

    Undefined values (e.g. APs with no small objects) are nan; no detections at all give zeros.
    results_json: also write the detections there, and the ground truth they were scored against to
    ground_truth_json(results_json), both with the ids of with_dataset_ids.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    _per_image(predictions, len(dataset))  # checks the indices
    results, truth = to_coco_results(predictions), to_coco_gt(dataset)
    if results_json is not None:
        own_results, own_truth = with_dataset_ids(dataset, results, truth)
        write_json(own_results, results_json)
        write_json(own_truth, ground_truth_json(results_json))
    result = {"metric": "COCO AP@[.5:.95]"}
    if not results:
        return {**result, **{key: 0.0 for key in COCO_KEYS}, "summary": "no detections: every AP is 0"}
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        gt = COCO()
        gt.dataset = truth
        gt.createIndex()
        evaluator = COCOeval(gt, gt.loadRes(results), iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
    summary = io.StringIO()
    with contextlib.redirect_stdout(summary):
        evaluator.summarize()
    stats = [float("nan") if s < 0 else float(s) for s in evaluator.stats[:len(COCO_KEYS)]]
    return {**result, **dict(zip(COCO_KEYS, stats)), "summary": summary.getvalue()}


def agreement(reference: dict[int, dict], expected: dict[int, dict], min_score: float = 0.0,
              iou: float = 0.99) -> dict[str, float]:
    """How many detections (score ≥ min_score) two detectors share: same label and box IoU ≥ iou, one-to-one.

    `agreed / total`, where total counts each image's larger detection list.
    """
    agreed = total = 0
    for index, want in expected.items():
        got = reference.get(index, {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0), "scores": torch.zeros(0)})
        a, b = (want["scores"] >= min_score), (got["scores"] >= min_score)
        total += max(int(a.sum()), int(b.sum()))
        ious = box_iou(want["boxes"][a], got["boxes"][b])
        ious[want["labels"][a].view(-1, 1) != got["labels"][b].view(1, -1)] = 0
        for row in ious:  # expected detections in score order: each takes its best free partner
            best = int(row.argmax()) if len(row) else -1
            if best >= 0 and row[best] >= iou:
                agreed += 1
                ious[:, best] = 0
    return {"agreed": agreed, "total": total, "fraction": agreed / total if total else 1.0}


def format_ap_table(result: dict) -> str:
    """A text table of per-class AP (VOC result) or of the COCO numbers, headed by the metric name."""
    lines = [result["metric"]]
    if "ap" in result:
        width = max([len("class")] + [len(name) for name in result["ap"]])
        lines.append(f"{'class':<{width}}  {'AP':>6}  {'#GT':>6}")
        lines.append("-" * (width + 16))
        for name, ap in result["ap"].items():
            lines.append(f"{name:<{width}}  {ap:>6.4f}  {result['num_gt'][name]:>6d}")
        lines.append("-" * (width + 16))
        lines.append(f"{'mAP':<{width}}  {result['map']:>6.4f}")
    else:
        lines += [f"{key:<5}  {result[key]:.4f}" for key in COCO_KEYS]
    return "\n".join(lines)
