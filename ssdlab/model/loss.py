"""The MultiBox loss: classification with hard negative mining plus smooth-L1 box regression.

Almost every prior is background, so the classifier would learn to say
"background" everywhere. Hard negative mining keeps, per image, only the
negatives the model finds hardest (highest background loss), at most
`neg_pos_ratio` times the number of positives.

Both losses are summed and divided by the number of positives in the batch
(at least 1). An image without objects has no positives; it still keeps
`min_negatives` hard negatives (MultiBoxLoss uses neg_pos_ratio, as many as an
image with one object), so it still teaches "background" and the loss stays finite.
"""
from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Criterion(Protocol):
    """A training loss: (class logits [B,N,C], box offsets [B,N,4], targets) -> named loss terms."""

    def __call__(self, cls_logits: Tensor, bbox_pred: Tensor, targets: dict[str, Tensor]) -> dict[str, Tensor]: ...


def hard_negative_mining(bg_loss: Tensor, labels: Tensor, neg_pos_ratio: int, min_negatives: int = 0) -> Tensor:
    """BoolTensor[B, N]: the positives plus, per image, the max(ratio * #pos, min_negatives) hardest negatives."""
    positive = labels > 0
    num_neg = (positive.sum(dim=1, keepdim=True) * neg_pos_ratio).clamp(min=min_negatives)
    loss = bg_loss.masked_fill(positive, -float("inf"))  # positives are never picked as negatives
    most = min(int(num_neg.max()), loss.shape[1])
    hardest = loss.topk(most, dim=1).indices  # per image, the `most` hardest negatives, hardest first
    wanted = torch.arange(most, device=loss.device) < num_neg  # [B, most]: this image's first num_neg of them
    negative = torch.zeros_like(positive).scatter_(1, hardest, wanted) & ~positive
    return positive | negative


class MultiBoxLoss(nn.Module):
    """SSD loss: cross-entropy over positives and mined negatives, smooth-L1 over positives."""

    def __init__(self, neg_pos_ratio: int = 3, min_negatives: int | None = None):
        super().__init__()
        self.neg_pos_ratio = neg_pos_ratio
        self.min_negatives = neg_pos_ratio if min_negatives is None else min_negatives

    def forward(self, cls_logits: Tensor, bbox_pred: Tensor, targets: dict[str, Tensor]) -> dict[str, Tensor]:
        """{"reg_loss", "cls_loss"} for logits [B,N,C], offsets [B,N,4] and targets {"labels" [B,N], "boxes" [B,N,4]
        (encoded)}."""
        labels, box_targets = targets["labels"], targets["boxes"]
        with torch.no_grad():
            bg_loss = torch.logsumexp(cls_logits, dim=2) - cls_logits[:, :, 0]  # -log softmax(background)
            keep = hard_negative_mining(bg_loss, labels, self.neg_pos_ratio, self.min_negatives)
        cls_loss = F.cross_entropy(cls_logits[keep], labels[keep], reduction="sum")
        positive = labels > 0
        reg_loss = F.smooth_l1_loss(bbox_pred[positive], box_targets[positive], reduction="sum")
        num_pos = positive.sum().clamp(min=1)
        return {"reg_loss": reg_loss / num_pos, "cls_loss": cls_loss / num_pos}
