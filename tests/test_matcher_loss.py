"""Matching and the MultiBox loss on hand-worked examples."""
import math

import pytest
import torch
from torchvision.ops import box_convert

from ssdlab.model.box_coder import encode
from ssdlab.model.loss import MultiBoxLoss, hard_negative_mining
from ssdlab.model.matcher import match, match_index

# priors (cx, cy, w, h) and their xyxy corners
PRIORS = torch.tensor([
    [0.25, 0.25, 0.5, 0.5],  # p0: (0, 0, .5, .5)
    [0.75, 0.75, 0.5, 0.5],  # p1: (.5, .5, 1, 1)
    [0.50, 0.50, 0.2, 0.2],  # p2: (.4, .4, .6, .6)
    [0.30, 0.30, 0.4, 0.4],  # p3: (.1, .1, .5, .5)
])
GT_A = [0.0, 0.0, 0.5, 0.5]      # IoU p0 = 1, p3 = .16/.25 = .64, p2 = .01/.28
GT_B = [0.55, 0.55, 0.95, 0.95]  # IoU p1 = .16/.25 = .64, p2 = .0025/.1975
GT_C = [0.45, 0.45, 0.55, 0.55]  # IoU p2 = .01/.04 = .25 (its best prior, below 0.5)


def test_each_prior_takes_its_best_gt_above_threshold():
    labels, boxes = match(torch.tensor([GT_A, GT_B]), torch.tensor([3, 5]), PRIORS)
    assert labels.tolist() == [3, 5, 0, 3]
    assert labels.dtype == torch.long
    torch.testing.assert_close(boxes[[0, 1, 3]], torch.tensor([GT_A, GT_B, GT_A]))


def test_best_prior_is_forced_even_below_threshold():
    labels, boxes = match(torch.tensor([GT_A, GT_B, GT_C]), torch.tensor([3, 5, 7]), PRIORS)
    assert labels.tolist() == [3, 5, 7, 3]  # p2 overlaps C by only 0.25 but is C's best prior
    torch.testing.assert_close(boxes[2], torch.tensor(GT_C))


def test_threshold():
    labels, _ = match(torch.tensor([GT_A, GT_B]), torch.tensor([3, 5]), PRIORS, iou_threshold=0.7)
    # p3 (IoU .64 with A) drops to background; p1 (IoU .64 with B) is B's best prior and stays
    assert labels.tolist() == [3, 5, 0, 0]


def test_no_ground_truth_is_all_background():
    labels, boxes = match(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), PRIORS)
    assert labels.tolist() == [0, 0, 0, 0]
    torch.testing.assert_close(encode(boxes, PRIORS), torch.zeros(4, 4))


def test_hard_negative_mining_keeps_three_negatives_per_positive():
    bg_loss = torch.tensor([
        [0.1, 0.9, 5.0, 0.3, 0.8, 0.2, 0.7, 0.05, 0.6, 0.4],
        [9.0, 0.1, 0.2, 0.3, 0.4, 9.0, 0.5, 0.6, 0.7, 0.8],
    ])
    labels = torch.zeros(2, 10, dtype=torch.long)
    labels[0, 2] = 1
    labels[1, [0, 5]] = 4
    keep = hard_negative_mining(bg_loss, labels, neg_pos_ratio=3)
    # image 0: the positive plus the negatives with the 3 largest losses (0.9, 0.8, 0.7)
    assert keep[0].nonzero().flatten().tolist() == [1, 2, 4, 6]
    # image 1: 2 positives -> 6 negatives, the 6 largest of the 8
    assert keep[1].nonzero().flatten().tolist() == [0, 3, 4, 5, 6, 7, 8, 9]
    negatives = (keep & (labels == 0)).sum(dim=1)
    assert negatives.tolist() == [3, 6]


def test_hard_negative_mining_without_positives():
    bg_loss = torch.tensor([[0.1, 0.9, 0.3, 0.8, 0.2]])
    labels = torch.zeros(1, 5, dtype=torch.long)
    assert not hard_negative_mining(bg_loss, labels, 3).any()
    assert hard_negative_mining(bg_loss, labels, 3, min_negatives=2)[0].tolist() == [False, True, False, True, False]


def test_hard_negative_mining_when_fewer_negatives_than_wanted():
    bg_loss = torch.tensor([[0.1, 0.9, 0.3, 0.8, 0.2], [0.5, 0.4, 0.3, 0.2, 0.1]])
    labels = torch.tensor([[1, 0, 2, 0, 0], [0, 0, 0, 0, 0]])
    keep = hard_negative_mining(bg_loss, labels, 3, min_negatives=1)
    assert keep[0].all()  # 2 positives want 6 negatives: all 3 there are, and the positives
    assert keep[1].tolist() == [True, False, False, False, False]  # none wanted but min_negatives: the hardest


def cross_entropy(row, label):
    """-log softmax(row)[label] in plain Python."""
    return -row[label] + math.log(sum(math.exp(v) for v in row))


def smooth_l1(x):
    """Smooth-L1 with beta 1 in plain Python."""
    return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5


def test_loss_by_hand():
    logits = [
        [1.0, 0.0, 2.0],  # positive, label 2
        [2.0, 0.0, 0.0],  # background loss log(e^2 + 2) - 2 = 0.24
        [0.0, 1.0, 0.0],  # log(2 + e) = 1.55     (kept)
        [0.0, 0.0, 3.0],  # log(2 + e^3) = 3.10   (kept)
        [3.0, 0.0, 0.0],  # 0.10
        [1.0, 1.0, 0.0],  # log(2e + 1) - 1 = 0.86 (kept)
    ]
    labels = torch.tensor([[2, 0, 0, 0, 0, 0]])
    bbox_pred = torch.zeros(1, 6, 4)
    bbox_pred[0, 0] = torch.tensor([0.5, -2.0, 0.0, 1.2])
    bbox_pred[0, 1] = 100.0  # a background prior: no regression loss
    targets = torch.zeros(1, 6, 4)
    losses = MultiBoxLoss(neg_pos_ratio=3)(torch.tensor([logits]), bbox_pred, {"labels": labels, "boxes": targets})
    expected_cls = sum(cross_entropy(logits[i], lab) for i, lab in [(0, 2), (2, 0), (3, 0), (5, 0)])
    expected_reg = sum(smooth_l1(v) for v in [0.5, -2.0, 0.0, 1.2])  # 0.125 + 1.5 + 0 + 0.72
    assert losses["cls_loss"].item() == pytest.approx(expected_cls, rel=1e-5)
    assert losses["reg_loss"].item() == pytest.approx(expected_reg, rel=1e-5)


def test_loss_divides_by_positives_of_the_batch():
    torch.manual_seed(0)
    logits, pred, targets = torch.randn(2, 20, 4), torch.randn(2, 20, 4), torch.randn(2, 20, 4)
    labels = torch.zeros(2, 20, dtype=torch.long)
    labels[0, [1, 2]] = 1
    labels[1, 7] = 3
    loss = MultiBoxLoss(3)
    both = loss(logits, pred, {"labels": labels, "boxes": targets})
    first = loss(logits[:1], pred[:1], {"labels": labels[:1], "boxes": targets[:1]})
    second = loss(logits[1:], pred[1:], {"labels": labels[1:], "boxes": targets[1:]})
    for key in ("cls_loss", "reg_loss"):  # batch sum / 3 positives = (2 * first + 1 * second) / 3
        torch.testing.assert_close(both[key], (2 * first[key] + second[key]) / 3)


def test_zero_positives_is_finite_and_still_teaches_background():
    logits = torch.randn(2, 30, 5, requires_grad=True)
    pred = torch.randn(2, 30, 4, requires_grad=True)
    labels = torch.zeros(2, 30, dtype=torch.long)
    losses = MultiBoxLoss(3)(logits, pred, {"labels": labels, "boxes": torch.zeros(2, 30, 4)})
    assert losses["reg_loss"].item() == 0
    assert torch.isfinite(losses["cls_loss"]) and losses["cls_loss"].item() > 0
    sum(losses.values()).backward()
    assert torch.isfinite(logits.grad).all()
    assert (logits.grad.abs().sum(dim=2) > 0).sum().item() == 2 * 3  # 3 hard negatives per image


def test_match_index_by_hand():
    gt = torch.tensor([GT_A, GT_B, GT_C])
    assert match_index(gt, PRIORS).tolist() == [0, 1, 2, 0]  # p2 is C's forced best prior
    assert match_index(gt[:2], PRIORS, iou_threshold=0.7).tolist() == [0, 1, -1, -1]
    assert match_index(torch.zeros(0, 4), PRIORS).tolist() == [-1, -1, -1, -1]


def test_match_index_agrees_with_match():
    torch.manual_seed(0)
    corners = torch.rand(7, 2, 2).sort(dim=1).values  # (x0 < x1, y0 < y1)
    gt = torch.stack([corners[:, 0, 0], corners[:, 0, 1], corners[:, 1, 0], corners[:, 1, 1]], dim=1)
    gt_labels = torch.arange(1, 8)
    priors = torch.cat([torch.rand(200, 2), torch.rand(200, 2) * 0.5 + 0.05], dim=1)
    labels, boxes = match(gt, gt_labels, priors)
    index = match_index(gt, priors)
    kept_corners = match(gt, gt_labels, priors, priors_xyxy=box_convert(priors, "cxcywh", "xyxy"))
    assert torch.equal(kept_corners[0], labels) and torch.equal(kept_corners[1], boxes)
    assert torch.equal(labels, torch.where(index >= 0, gt_labels[index.clamp(min=0)], 0))
    torch.testing.assert_close(boxes[index >= 0], gt[index[index >= 0]])
