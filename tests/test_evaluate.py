"""Tests for ssdlab.engine.evaluate: hand-worked VOC AP and COCO AP against pycocotools run directly."""
from __future__ import annotations

import contextlib
import io
import json
import math

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ssdlab.data.coco import COCODataset
from ssdlab.engine.evaluate import (evaluate_coco, evaluate_voc, format_ap_table, to_coco_gt,
                                    to_coco_results, voc_ap)
from ssdlab.errors import DataError
from test_loaders import make_coco


class TinyDataset:
    """A stand-in DetectionDataset: fixed annotations on 100x120 images."""

    class_names = ("__background__", "cat", "dog")

    def __init__(self, annotations: list[tuple[list, list, list]]):
        self.annotations = annotations

    def __len__(self) -> int:
        return len(self.annotations)

    def get_annotation(self, i: int):
        """(boxes float32 [K, 4], labels int64 [K], difficult bool [K]) of image i."""
        boxes, labels, difficult = self.annotations[i]
        return (np.array(boxes, np.float32).reshape(-1, 4), np.array(labels, np.int64),
                np.array(difficult, bool))

    def get_img_info(self, i: int) -> dict:
        """Size and file name of image i."""
        return {"height": 100, "width": 120, "file": f"img{i}.jpg"}


CAT_A, CAT_B, FAR = [10, 10, 50, 50], [60, 20, 110, 90], [0, 60, 20, 95]


def detections(boxes, labels, scores) -> dict:
    """One image's predictions as numpy arrays."""
    return {"boxes": np.array(boxes, np.float32).reshape(-1, 4), "labels": np.array(labels),
            "scores": np.array(scores, np.float32)}


def test_voc_ap_hand_worked():
    recall, precision = np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3])
    # area: envelope 1 on (0, 0.5], 2/3 on (0.5, 1] -> 0.5 + 1/3
    assert voc_ap(recall, precision, use_07_metric=False) == pytest.approx(5 / 6)
    # 11-point: t = 0..0.5 (6 points) -> 1, t = 0.6..1 (5 points) -> 2/3
    assert voc_ap(recall, precision, use_07_metric=True) == pytest.approx((6 + 5 * 2 / 3) / 11)
    assert voc_ap(np.array([]), np.array([]), use_07_metric=False) == 0.0


def test_perfect_detections_give_one():
    data = TinyDataset([([CAT_A, CAT_B], [1, 2], [0, 0]), ([FAR], [1], [0])])
    preds = {0: detections([CAT_A, CAT_B], [1, 2], [0.9, 0.8]), 1: detections([FAR], [1], [0.7])}
    for use_07 in (False, True):
        result = evaluate_voc(data, preds, use_07_metric=use_07)
        assert result["map"] == pytest.approx(1.0)
        assert result["ap"] == pytest.approx({"cat": 1.0, "dog": 1.0})
        assert result["num_gt"] == {"cat": 2, "dog": 1}
    assert result["metric"] == "VOC mAP@0.5 (11-point)"


def test_false_positive_ranked_first():
    data = TinyDataset([([CAT_A, CAT_B], [1, 1], [0, 0])])
    preds = [detections([FAR, CAT_A, CAT_B], [1, 1, 1], [0.9, 0.8, 0.7])]
    result = evaluate_voc(data, preds)
    recall, precision = result["pr"]["cat"]
    assert np.allclose(recall, [0, 0.5, 1]) and np.allclose(precision, [0, 0.5, 2 / 3])
    assert result["ap"]["cat"] == pytest.approx(2 / 3)  # envelope 2/3 everywhere


def test_duplicate_counts_as_false_positive_and_metrics_differ():
    data = TinyDataset([([CAT_A, CAT_B], [1, 1], [0, 0])])
    shifted = [11, 10, 51, 50]  # IoU 0.95 with CAT_A, which is already taken
    preds = [detections([CAT_A, shifted, CAT_B], [1, 1, 1], [0.9, 0.8, 0.7])]
    area = evaluate_voc(data, preds, use_07_metric=False)
    eleven = evaluate_voc(data, preds, use_07_metric=True)
    assert np.allclose(area["pr"]["cat"][1], [1, 0.5, 2 / 3])
    assert area["ap"]["cat"] == pytest.approx(5 / 6)
    assert eleven["ap"]["cat"] == pytest.approx(28 / 33)


def test_difficult_ground_truth_is_ignored():
    data = TinyDataset([([CAT_A, CAT_B], [1, 1], [0, 1])])
    preds = [detections([CAT_B, CAT_A], [1, 1], [0.9, 0.8])]
    result = evaluate_voc(data, preds)
    assert result["num_gt"]["cat"] == 1
    recall, precision = result["pr"]["cat"]
    assert np.allclose(recall, [1]) and np.allclose(precision, [1])  # the hit on CAT_B is not on the curve
    assert result["ap"]["cat"] == pytest.approx(1.0)


def test_iou_threshold_uses_continuous_coordinates():
    data = TinyDataset([([[0, 0, 10, 10]], [1], [0])])
    at_half = evaluate_voc(data, [detections([[0, 0, 10, 20]], [1], [0.9])])  # IoU 100/200
    below = evaluate_voc(data, [detections([[0, 0, 10, 21]], [1], [0.9])])  # IoU 100/210
    assert at_half["ap"]["cat"] == pytest.approx(1.0) and below["ap"]["cat"] == 0.0


def test_class_without_ground_truth_is_nan_and_left_out():
    data = TinyDataset([([CAT_A], [1], [0])])
    preds = {0: {"boxes": torch.tensor([CAT_A, CAT_B], dtype=torch.float32), "labels": torch.tensor([1, 2]),
                 "scores": torch.tensor([0.9, 0.8])}}
    result = evaluate_voc(data, preds)
    assert math.isnan(result["ap"]["dog"]) and result["map"] == pytest.approx(1.0)
    table = format_ap_table(result)
    assert table.splitlines()[0] == "VOC mAP@0.5 (area)" and "dog" in table and "nan" in table


def test_missing_images_and_bad_predictions():
    data = TinyDataset([([CAT_A], [1], [0]), ([CAT_B], [1], [0])])
    assert evaluate_voc(data, {0: detections([CAT_A], [1], [0.9])})["ap"]["cat"] == pytest.approx(0.5)
    with pytest.raises(DataError, match="dataset has 2 images"):
        evaluate_voc(data, {5: detections([CAT_A], [1], [0.9])})
    with pytest.raises(DataError, match="labels must be 1..2"):
        evaluate_voc(data, {0: detections([CAT_A], [3], [0.9])})


def random_scene(seed: int) -> tuple[TinyDataset, dict]:
    """Images with random GT (one difficult) and noisy, partly wrong detections."""
    rng = np.random.default_rng(seed)
    annotations, preds = [], {}
    for i in range(6):
        count = int(rng.integers(1, 5))
        xy = rng.uniform(0, 70, (count, 2))
        wh = rng.uniform(5, 45, (count, 2))
        boxes = np.round(np.concatenate([xy, xy + wh], axis=1) * 4) / 4  # exact in float32 too
        labels = rng.integers(1, 3, count)
        difficult = np.zeros(count, bool)
        difficult[0] = i == 2
        annotations.append((boxes.tolist(), labels.tolist(), difficult.tolist()))
        noisy = boxes + rng.normal(0, 3, boxes.shape)
        extra = np.concatenate([xy[:1] + 20, xy[:1] + 40], axis=1)
        preds[i] = detections(np.concatenate([noisy, extra]), np.append(labels, 1), rng.uniform(0, 1, count + 1))
    return TinyDataset(annotations), preds


def hand_written_gt(data: TinyDataset) -> dict:
    """COCO ground truth for data, written out field by field (independently of to_coco_gt)."""
    images = [{"id": i, "width": 120, "height": 100, "file_name": f"img{i}.jpg"} for i in range(len(data))]
    annotations = []
    for i, (boxes, labels, difficult) in enumerate(data.annotations):
        for (x1, y1, x2, y2), label, hard in zip(boxes, labels, difficult):
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": label,
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                                "iscrowd": int(hard)})
    return {"images": images, "annotations": annotations,
            "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]}


def test_coco_matches_pycocotools_run_directly(tmp_path):
    data, preds = random_scene(0)
    results = [{"image_id": i, "category_id": int(label), "score": float(score),
                "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]}
               for i, p in preds.items() for b, label, score in zip(p["boxes"], p["labels"], p["scores"])]
    (tmp_path / "gt.json").write_text(json.dumps(hand_written_gt(data)))
    (tmp_path / "res.json").write_text(json.dumps(results))
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(tmp_path / "gt.json"))
        direct = COCOeval(gt, gt.loadRes(str(tmp_path / "res.json")), iouType="bbox")
        direct.evaluate()
        direct.accumulate()
        direct.summarize()
    ours = evaluate_coco(data, preds, results_json=tmp_path / "ours.json")
    expected = [float("nan") if s < 0 else s for s in direct.stats[:6]]
    got = [ours[k] for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")]
    assert np.allclose(got, expected, equal_nan=True)
    assert 0 < ours["AP"] < 1 and ours["metric"] == "COCO AP@[.5:.95]"
    assert "Average Precision" in ours["summary"]
    saved = json.loads((tmp_path / "ours.json").read_text())
    assert saved == to_coco_results(preds) and len(saved) == len(results)
    assert not list(tmp_path.glob("*.tmp"))
    with contextlib.redirect_stdout(io.StringIO()):  # the written pair alone reproduces the scores
        from_files = COCO(str(tmp_path / "ours.gt.json"))
        again = COCOeval(from_files, from_files.loadRes(str(tmp_path / "ours.json")), iouType="bbox")
        again.evaluate()
        again.accumulate()
        again.summarize()
    assert np.allclose([float("nan") if s < 0 else s for s in again.stats[:6]], expected, equal_nan=True)


def test_coco_gt_fields():
    data = TinyDataset([([CAT_A, CAT_B], [1, 2], [0, 1])])
    gt = to_coco_gt(data)
    assert [a["id"] for a in gt["annotations"]] == [1, 2]
    assert gt["annotations"][0]["bbox"] == [10, 10, 40, 40] and gt["annotations"][0]["area"] == 1600
    assert [a["iscrowd"] for a in gt["annotations"]] == [0, 1]
    assert gt["images"] == [{"id": 0, "height": 100, "width": 120, "file_name": "img0.jpg"}]
    assert gt["categories"] == [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]


def test_coco_without_detections_gives_zeros():
    data = TinyDataset([([CAT_A], [1], [0])])
    result = evaluate_coco(data, {0: detections(np.zeros((0, 4)), [], [])})
    assert all(result[k] == 0.0 for k in ("AP", "AP50", "AP75", "APs", "APm", "APl"))
    assert format_ap_table(result).splitlines()[0] == "COCO AP@[.5:.95]"


def loop_voc_ap(data: TinyDataset, preds: dict, cls: int) -> float:
    """The VOC devkit's loop, written plainly (continuous coordinates, area AP) as a reference."""
    gts = {i: data.get_annotation(i) for i in range(len(data))}
    taken = {i: np.zeros(len(gts[i][0]), bool) for i in gts}
    npos = sum(int(((labels == cls) & ~hard).sum()) for _, labels, hard in gts.values())
    dets = sorted(((s, i, b) for i, p in preds.items() for b, label, s in zip(p["boxes"], p["labels"], p["scores"])
                   if label == cls), key=lambda d: -d[0])
    tp, fp = [], []
    for _, i, box in dets:
        boxes, labels, hard = gts[i]
        ious = [0.0 if labels[j] != cls else float(
            max(0, min(box[2], b[2]) - max(box[0], b[0])) * max(0, min(box[3], b[3]) - max(box[1], b[1]))
            / ((box[2] - box[0]) * (box[3] - box[1]) + (b[2] - b[0]) * (b[3] - b[1])
               - max(0, min(box[2], b[2]) - max(box[0], b[0])) * max(0, min(box[3], b[3]) - max(box[1], b[1]))))
            for j, b in enumerate(boxes)]
        j = int(np.argmax(ious)) if ious else -1
        if j >= 0 and ious[j] >= 0.5 and hard[j]:
            continue
        hit = j >= 0 and ious[j] >= 0.5 and not taken[i][j]
        if hit:
            taken[i][j] = True
        tp.append(int(hit))
        fp.append(1 - int(hit))
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    recall = np.concatenate([[0], tp / npos, [1]])
    precision = np.concatenate([[0], tp / np.maximum(tp + fp, 1), [0]])
    for k in range(len(precision) - 2, -1, -1):
        precision[k] = max(precision[k], precision[k + 1])
    return float(sum((recall[k + 1] - recall[k]) * precision[k + 1] for k in range(len(recall) - 1)))


@pytest.mark.parametrize("seed", range(5))
def test_voc_matches_a_plain_devkit_loop(seed):
    data, preds = random_scene(seed)
    result = evaluate_voc(data, preds)
    for cls, name in ((1, "cat"), (2, "dog")):
        assert result["ap"][name] == pytest.approx(loop_voc_ap(data, preds, cls))


def test_detections_of_a_coco_set_carry_its_own_ids(tmp_path):
    images, ann = make_coco(tmp_path)  # image ids 1..3, category ids 7 (zebra, label 2) and 3 (cat, label 1)
    data = COCODataset(images, ann, remove_empty=False)
    preds = {0: detections([[10, 5, 30, 15], [50, 30, 60, 40]], [2, 1], [0.9, 0.8]), 2: detections([[1, 2, 4, 6]], [1], [0.7])}
    ours = evaluate_coco(data, preds, results_json=tmp_path / "d.json")
    saved = json.loads((tmp_path / "d.json").read_text())
    assert [(r["image_id"], r["category_id"]) for r in saved] == [(1, 7), (1, 3), (3, 3)]
    truth = json.loads((tmp_path / "d.gt.json").read_text())
    assert [i["id"] for i in truth["images"]] == [1, 2, 3] and [c["id"] for c in truth["categories"]] == [3, 7]
    assert ours["AP"] == pytest.approx(1.0)
    by_hand = [{"image_id": image, "category_id": category, "bbox": box, "score": score} for image, category, box, score
               in [(1, 7, [10, 5, 20, 10], 0.9), (1, 3, [50, 30, 10, 10], 0.8), (3, 3, [1, 2, 3, 4], 0.7)]]
    (tmp_path / "by_hand.json").write_text(json.dumps(by_hand))
    stats = []
    for results in ("d.json", "by_hand.json"):  # the file loads against the set's own annotation file
        with contextlib.redirect_stdout(io.StringIO()):
            official = COCO(str(ann))
            scored = COCOeval(official, official.loadRes(str(tmp_path / results)), iouType="bbox")
            scored.evaluate()
            scored.accumulate()
            scored.summarize()
        stats.append(scored.stats)
    assert np.allclose(stats[0], stats[1]) and stats[0][1] > 0.5  # (its cat box 2 runs off the image: AP50 < 1)
