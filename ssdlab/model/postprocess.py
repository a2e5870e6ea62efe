"""Turn raw head outputs into detections: softmax, decode, threshold, per-class NMS, top-k.

Boxes come out in network-input pixels (0..image_size); scaling them to the
original image size is the caller's job (the evaluator knows each image's size).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import batched_nms

from ssdlab.model.box_coder import decode


def top_k_per_class(scores: Tensor, labels: Tensor, k: int) -> Tensor:
    """Indices of the k best-scoring candidates of each class (all when k <= 0)."""
    if k <= 0 or scores.numel() == 0:
        return torch.arange(scores.numel(), device=scores.device)
    by_score = scores.argsort(descending=True)
    grouped = by_score[labels[by_score].argsort(stable=True)]  # grouped by class, best first
    counts = torch.bincount(labels[grouped])
    starts = counts.cumsum(0) - counts
    rank = torch.arange(grouped.numel(), device=scores.device) - starts[labels[grouped]]
    return grouped[rank < k]


def detect_one(boxes: Tensor, scores: Tensor, score_threshold: float, nms_threshold: float,
               max_per_image: int, pre_nms_top_k: int = 400) -> dict[str, Tensor]:
    """Detections of one image from its boxes [N, 4] and class probabilities [N, C] (column 0 = background)."""
    num_priors, num_classes = scores.shape
    labels = torch.arange(1, num_classes, device=scores.device).expand(num_priors, -1).reshape(-1)
    scores = scores[:, 1:].reshape(-1)
    boxes = boxes.unsqueeze(1).expand(-1, num_classes - 1, -1).reshape(-1, 4)
    keep = scores > score_threshold
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    keep = top_k_per_class(scores, labels, pre_nms_top_k)
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    keep = batched_nms(boxes, scores, labels, nms_threshold)  # sorted by decreasing score
    if max_per_image > 0:
        keep = keep[:max_per_image]
    return {"boxes": boxes[keep], "labels": labels[keep], "scores": scores[keep]}


def postprocess(cls_logits: Tensor, bbox_pred: Tensor, priors: Tensor, image_size: int,
                center_variance: float = 0.1, size_variance: float = 0.2, score_threshold: float = 0.01,
                nms_threshold: float = 0.45, max_per_image: int = 100,
                pre_nms_top_k: int = 400) -> list[dict[str, Tensor]]:
    """Per image {"boxes" [K,4] xyxy pixels, "labels" [K] in 1..C-1, "scores" [K]}; max_per_image <= 0 keeps all.

    Before NMS each class keeps its pre_nms_top_k best candidates (torchvision's SSD uses 400),
    which bounds the cost on an untrained model whose every score passes the threshold.
    """
    scores = F.softmax(cls_logits, dim=2)
    boxes = (decode(bbox_pred, priors, center_variance, size_variance) * image_size).clamp(0, image_size)
    return [detect_one(b, s, score_threshold, nms_threshold, max_per_image, pre_nms_top_k)
            for b, s in zip(boxes, scores)]
