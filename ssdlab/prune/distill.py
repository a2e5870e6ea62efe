"""Knowledge distillation for fine-tuning a pruned model from its unpruned teacher.

The teacher (DISTILL.TEACHER, any ssdlab checkpoint with the same classes) runs on each
training batch without gradients (`DistillationPlugin`). The student's loss gains two terms
(`DistillationLoss`, wrapped around the model's criterion):

- `distill_cls`: KL(teacher ‖ student) of the class distributions softened by the temperature
  T, times T² (Hinton et al. 2015), averaged over all priors, weighted by DISTILL.CLS_WEIGHT;
- `distill_box`: squared L2 distance to the teacher's box offsets on the positive priors
  (those matched to an object), weighted by DISTILL.BOX_WEIGHT.

A pruned model with dropped head levels (--max 1) has fewer priors: its priors are the first
ones of the teacher's, so the teacher's outputs are cut to the student's length.
"""
from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssdlab.config import CfgNode
from ssdlab.engine import checkpoint as ckpt
from ssdlab.engine.plugins import Plugin
from ssdlab.errors import ConfigError


class Teacher:
    """A frozen teacher model whose raw outputs join the training targets."""

    def __init__(self, cfg: CfgNode, device: torch.device):
        self.model = ckpt.load(cfg.DISTILL.TEACHER, device)
        if self.model.cfg.MODEL.NUM_CLASSES != cfg.MODEL.NUM_CLASSES:
            raise ConfigError(f"DISTILL.TEACHER {cfg.DISTILL.TEACHER} predicts {self.model.cfg.MODEL.NUM_CLASSES} "
                              f"classes but the student {cfg.MODEL.NUM_CLASSES}; distil from a model of the same data")
        for param in self.model.parameters():
            param.requires_grad_(False)

    @torch.no_grad()
    def __call__(self, images: Tensor) -> dict[str, Tensor]:
        """{"teacher_logits", "teacher_boxes"} for a batch."""
        logits, boxes = self.model.forward_raw(images)
        return {"teacher_logits": logits, "teacher_boxes": boxes}


def distillation_losses(cls_logits: Tensor, bbox_pred: Tensor, labels: Tensor, teacher_logits: Tensor,
                        teacher_boxes: Tensor, cfg: CfgNode) -> dict[str, Tensor]:
    """The two distillation terms (see the module doc)."""
    priors = cls_logits.shape[1]
    if teacher_logits.shape[1] < priors:
        raise ConfigError(f"the teacher predicts {teacher_logits.shape[1]} priors, fewer than the student's {priors}; "
                          "DISTILL.TEACHER must be the unpruned model the student came from")
    t = cfg.DISTILL.TEMPERATURE
    teacher_logits, teacher_boxes = teacher_logits[:, :priors], teacher_boxes[:, :priors]
    kl = F.kl_div(F.log_softmax(cls_logits / t, dim=-1), F.log_softmax(teacher_logits / t, dim=-1),
                  reduction="none", log_target=True).sum(-1).mean() * t * t
    positive = labels > 0
    box = ((bbox_pred - teacher_boxes) ** 2).sum(-1)[positive].sum() / positive.sum().clamp(min=1)
    return {"distill_cls": cfg.DISTILL.CLS_WEIGHT * kl, "distill_box": cfg.DISTILL.BOX_WEIGHT * box}


class DistillationLoss(nn.Module):
    """A criterion that adds the distillation terms to another (the teacher's outputs come in the targets)."""

    def __init__(self, base: nn.Module, cfg: CfgNode):
        super().__init__()
        self.base, self.cfg = base, cfg

    def forward(self, cls_logits: Tensor, bbox_pred: Tensor, targets: dict[str, Tensor]) -> dict[str, Tensor]:
        """The base losses plus distill_cls and distill_box."""
        losses = self.base(cls_logits, bbox_pred, targets)
        losses.update(distillation_losses(cls_logits, bbox_pred, targets["labels"], targets["teacher_logits"],
                                          targets["teacher_boxes"], self.cfg))
        return losses


class DistillationPlugin(Plugin):
    """Fine-tuning with distillation: the teacher (DISTILL.TEACHER) runs on each batch, the student's
    criterion gains the two distillation terms."""

    def __init__(self, cfg: CfgNode):
        self.cfg = cfg
        self.teacher: Teacher | None = None

    def setup(self, model: nn.Module, device: torch.device) -> None:
        """Load the teacher on the model's device and wrap the model's criterion."""
        self.teacher = Teacher(self.cfg, device)
        model.criterion = DistillationLoss(cast(nn.Module, model.criterion), self.cfg)

    def targets(self, images: Tensor) -> dict[str, Tensor]:
        """The teacher's logits and boxes for the batch."""
        assert self.teacher is not None, "setup() loads the teacher"
        return self.teacher(images)
