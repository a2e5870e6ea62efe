"""Tests for ssdlab.engine.diagnose: a hand-worked image, and agreement with evaluate_voc's true positives."""
from __future__ import annotations

import numpy as np

from ssdlab.engine.diagnose import diagnose, format_diagnosis, found_percent, size_label
from ssdlab.engine.evaluate import evaluate_voc
from test_evaluate import TinyDataset as Images  # 120x100 images: shorter side 100


CAT_A, DOG_B, CAT_C, CAT_D = [10, 10, 50, 50], [60, 20, 110, 90], [0, 60, 20, 95], [80, 0, 90, 8]


def test_size_bins():
    assert [size_label(x) for x in (0.05, 0.12, 0.3, 0.35, 0.9)] == ["< 0.12", "0.12-0.2", "0.2-0.35", ">= 0.35",
                                                                    ">= 0.35"]


def test_hand_worked_image():
    # sizes: A 40/100 = 0.4, B 70/100 = 0.7, C 35/100 = 0.35, D 10/100 = 0.1
    data = Images([([CAT_A, DOG_B, CAT_C, CAT_D], [1, 2, 1, 1], [0, 0, 0, 0])])
    dets = {0: {"boxes": np.array([CAT_A,                 # 0.9 cat on A: correct, A found
                                   [11, 10, 51, 50],      # 0.8 cat on A again: duplicate
                                   DOG_B,                 # 0.7 cat on dog B: wrong class, B confused
                                   [0, 60, 20, 75],       # 0.6 cat on C with IoU 300/700 = 0.43: poor box
                                   [100, 90, 110, 100],   # 0.5 dog touching nothing: background
                                   CAT_D], np.float32),   # 0.1: below the threshold, so D is missed
                "labels": np.array([1, 1, 1, 1, 2, 1]), "scores": np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.1])}}
    result = diagnose(data, dets, score_threshold=0.3)
    assert result["detections"] == {"correct": 1, "duplicate": 1, "wrong class": 1, "poor box": 1, "background": 1}
    assert result["objects"][">= 0.35"] == {"found": 1, "wrong class": 1, "poor box": 1, "missed": 0}
    assert result["objects"]["< 0.12"] == {"found": 0, "wrong class": 0, "poor box": 0, "missed": 1}
    assert sum(sum(c.values()) for c in result["objects"].values()) == 4
    # with every detection counted, D is found and the sixth detection is correct
    everything = diagnose(data, dets, score_threshold=0.0)
    assert everything["objects"]["< 0.12"]["found"] == 1 and everything["detections"]["correct"] == 2
    assert found_percent(result)[">= 0.35"] == 100 / 3 and found_percent(result)["0.12-0.2"] is None
    text = format_diagnosis(result)
    assert "scoring >= 0.3" in text and "duplicate 1" in text


def test_difficult_objects_are_left_out():
    data = Images([([CAT_A, DOG_B], [1, 2], [1, 0])])
    dets = {0: {"boxes": np.array([CAT_A, DOG_B], np.float32), "labels": np.array([1, 2]),
                "scores": np.array([0.9, 0.8])}}
    result = diagnose(data, dets)
    assert result["detections"] == {"correct": 1, "duplicate": 0, "wrong class": 0, "poor box": 0, "background": 0}
    assert sum(sum(c.values()) for c in result["objects"].values()) == 1


def test_correct_count_equals_voc_true_positives():
    rng = np.random.default_rng(0)
    annotations, predictions = [], {}
    for i in range(20):
        xy = rng.uniform(0, 70, (4, 2))
        gt = np.concatenate([xy, xy + rng.uniform(8, 40, (4, 2))], axis=1)
        annotations.append((gt.tolist(), rng.integers(1, 3, 4).tolist(), [0, 0, 0, 0]))
        jitter = np.repeat(gt, 3, axis=0) + rng.normal(0, 4, (12, 4))
        predictions[i] = {"boxes": jitter.astype(np.float32), "labels": rng.integers(1, 3, 12),
                          "scores": rng.uniform(0, 1, 12).astype(np.float32)}
    data = Images(annotations)
    voc = evaluate_voc(data, predictions)
    true_positives = sum(round(float(r[-1]) * voc["num_gt"][c]) for c, (r, _p) in voc["pr"].items() if len(r))
    result = diagnose(data, predictions, score_threshold=0.0)
    assert result["detections"]["correct"] == true_positives > 0
    assert sum(result["detections"].values()) == 20 * 12
    # every true positive's object is found; an object can also be found by a detection VOC gave to a neighbour
    assert sum(c["found"] for c in result["objects"].values()) >= true_positives
