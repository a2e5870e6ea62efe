"""Heads (shapes, level -> row -> column -> box order, structure) and post-processing (NMS, top-k, clip)."""
import math

import pytest
import torch
from torch import nn

from ssdlab.model.heads import SSDHead, SSDLiteHead
from ssdlab.model.postprocess import postprocess

SIZES = [(3, 4), (2, 2)]  # (rows, columns) per level: not square, so rows and columns differ
BOXES = [4, 6]


def position_features(channels):
    """One feature map per level whose channel 0 holds the row index and channel 1 the column index."""
    features = []
    for (rows, cols), c in zip(SIZES, channels):
        f = torch.zeros(1, c, rows, cols)
        f[0, 0] = torch.arange(rows, dtype=torch.float32)[:, None]
        f[0, 1] = torch.arange(cols, dtype=torch.float32)[None, :]
        features.append(f)
    return features


def make_position_conv(conv: nn.Conv2d, per_box: int, level: int) -> None:
    """Outputs per box: (row, column, box index, level) through the centre tap and the bias."""
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.zero_()
        for box in range(conv.out_channels // per_box):
            conv.weight[box * per_box + 0, 0, 1, 1] = 1.0
            conv.weight[box * per_box + 1, 1, 1, 1] = 1.0
            conv.bias[box * per_box + 2] = box
            conv.bias[box * per_box + 3] = level


def test_ssd_head_order_is_level_row_column_box():
    head = SSDHead([2, 2], BOXES, num_classes=4)
    for level in range(2):
        make_position_conv(head.cls_headers[level], 4, level)
        make_position_conv(head.reg_headers[level], 4, level)
    cls_logits, bbox_pred = head(position_features([2, 2]))
    expected = torch.tensor([[i, j, b, level] for level, ((rows, cols), nb) in enumerate(zip(SIZES, BOXES))
                             for i in range(rows) for j in range(cols) for b in range(nb)], dtype=torch.float32)
    assert cls_logits.shape == (1, 3 * 4 * 4 + 2 * 2 * 6, 4)
    torch.testing.assert_close(cls_logits[0], expected)
    torch.testing.assert_close(bbox_pred[0], expected)


def test_ssd_head_shapes_and_init():
    head = SSDHead([8, 16], BOXES, num_classes=3)
    cls_logits, bbox_pred = head([torch.randn(2, 8, 3, 4), torch.randn(2, 16, 2, 2)])
    assert cls_logits.shape == (2, 72, 3) and bbox_pred.shape == (2, 72, 4)
    assert [m.kernel_size for m in head.cls_headers] == [(3, 3), (3, 3)]
    assert [m.out_channels for m in head.reg_headers] == [16, 24]
    assert all(m.bias.abs().sum() == 0 for m in head.modules() if isinstance(m, nn.Conv2d))
    names = list(head.state_dict())
    assert names[0].startswith("cls_headers.0") and names[-1].startswith("reg_headers.1")
    assert max(i for i, n in enumerate(names) if n.startswith("cls")) < names.index("reg_headers.0.weight")


def test_ssdlite_head_structure_and_shapes():
    head = SSDLiteHead([8, 16, 4], [6, 6, 4], num_classes=5)
    for headers, per_box in ((head.cls_headers, 5), (head.reg_headers, 4)):
        for level, c in enumerate([8, 16]):
            block = headers[level]
            assert block.conv.groups == c and block.conv.kernel_size == (3, 3)
            assert isinstance(block.bn, nn.BatchNorm2d) and isinstance(block.act, nn.ReLU6)
            assert block.pointwise.kernel_size == (1, 1) and block.pointwise.out_channels == 6 * per_box
        last = headers[2]
        assert isinstance(last, nn.Conv2d) and last.kernel_size == (1, 1) and last.out_channels == 4 * per_box
    features = [torch.randn(2, 8, 5, 5), torch.randn(2, 16, 3, 3), torch.randn(2, 4, 1, 1)]
    cls_logits, bbox_pred = head(features)
    n = 25 * 6 + 9 * 6 + 1 * 4
    assert cls_logits.shape == (2, n, 5) and bbox_pred.shape == (2, n, 4)
    assert next(iter(head.state_dict())).startswith("cls_headers.0")


def logits_for(probabilities):
    """Logits whose softmax is the given probability rows."""
    return torch.tensor(probabilities).log()


PRIORS = torch.tensor([
    [0.50, 0.5, 0.4, 0.4],  # p0
    [0.52, 0.5, 0.4, 0.4],  # p1: IoU with p0 = 0.36 / 0.44 = 0.82
    [0.50, 0.5, 0.4, 0.4],  # p2: same box as p0
])


def test_nms_removes_duplicates_of_a_class_but_keeps_other_classes():
    logits = logits_for([[[0.05, 0.9, 0.05], [0.1, 0.8, 0.1], [0.04, 0.005, 0.955]]])
    out = postprocess(logits, torch.zeros(1, 3, 4), PRIORS, image_size=300)
    assert len(out) == 1
    det = out[0]
    # class 1: p0 (0.9) suppresses p1 (0.8); class 2: p2 (0.955) suppresses p1 (0.1), p0 (0.05);
    # p2's class 1 score 0.005 is below the 0.01 threshold
    assert det["labels"].tolist() == [2, 1]
    torch.testing.assert_close(det["scores"], torch.tensor([0.955, 0.9]))
    torch.testing.assert_close(det["boxes"], torch.tensor([[90.0, 90.0, 210.0, 210.0]] * 2))
    assert det["labels"].dtype == torch.long


def test_top_k_keeps_the_best_scores():
    centres = torch.linspace(0.1, 0.9, 5)
    priors = torch.stack([centres, centres, torch.full((5,), 0.1), torch.full((5,), 0.1)], dim=1)
    probs = [[1 - p, p] for p in (0.3, 0.9, 0.5, 0.7, 0.2)]
    out = postprocess(logits_for([probs]), torch.zeros(1, 5, 4), priors, 100, max_per_image=2)[0]
    torch.testing.assert_close(out["scores"], torch.tensor([0.9, 0.7]))
    torch.testing.assert_close(out["boxes"][:, 0], torch.tensor([30.0, 70.0]) - 5)
    every = postprocess(logits_for([probs]), torch.zeros(1, 5, 4), priors, 100, max_per_image=0)[0]
    assert len(every["scores"]) == 5


def test_boxes_are_clipped_and_background_dropped():
    priors = torch.tensor([[0.95, 0.1, 0.3, 0.4], [0.5, 0.5, 0.2, 0.2]])
    loc = torch.zeros(2, 2, 4)
    loc[1, 0, 2] = math.log(2) / 0.2  # image 1: the first box twice as wide
    logits = logits_for([[[0.2, 0.8], [0.995, 0.005]]] * 2)
    out = postprocess(logits, loc, priors, image_size=200)
    torch.testing.assert_close(out[0]["boxes"], torch.tensor([[160.0, 0.0, 200.0, 60.0]]))
    torch.testing.assert_close(out[1]["boxes"], torch.tensor([[130.0, 0.0, 200.0, 60.0]]))
    background = postprocess(logits_for([[[0.999, 0.001]] * 2]), torch.zeros(1, 2, 4), priors, 200)[0]
    assert background["boxes"].shape == (0, 4) and background["scores"].shape == (0,)


@pytest.mark.parametrize("threshold, count", [(0.01, 2), (0.5, 1)])
def test_score_threshold(threshold, count):
    priors = torch.tensor([[0.2, 0.2, 0.1, 0.1], [0.8, 0.8, 0.1, 0.1]])
    logits = logits_for([[[0.4, 0.6], [0.7, 0.3]]])
    out = postprocess(logits, torch.zeros(1, 2, 4), priors, 100, score_threshold=threshold)[0]
    assert len(out["scores"]) == count


def test_top_k_per_class_keeps_each_class_best():
    from ssdlab.model.postprocess import top_k_per_class

    scores = torch.tensor([0.9, 0.1, 0.8, 0.7, 0.6, 0.5])
    labels = torch.tensor([1, 1, 2, 1, 2, 2])
    assert sorted(top_k_per_class(scores, labels, 2).tolist()) == [0, 2, 3, 4]
    assert sorted(top_k_per_class(scores, labels, -1).tolist()) == list(range(6))
