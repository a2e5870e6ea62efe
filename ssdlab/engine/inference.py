"""Run a detector over a dataset (sharded across ranks, gathered on every rank) and score it."""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from ssdlab.config import CfgNode
from ssdlab.data.loader import make_test_loader
from ssdlab.engine import distributed as dist
from ssdlab.engine.evaluate import evaluate_coco, evaluate_voc
from ssdlab.errors import DataError
from ssdlab.model.ssd import default_class_names

log = logging.getLogger(__name__)


def class_list(names: tuple[str, ...] | list[str]) -> str:
    """'3 classes (circle, square, triangle)': the classes after the background, the first eight named."""
    shown = ", ".join(names[1:9]) + (", ..." if len(names) > 9 else "")
    return f"{len(names) - 1} classes ({shown})"


def check_classes(model: nn.Module, dataset, where: str = "the model") -> None:
    """DataError, before any inference, when the model detects other classes than the dataset holds.

    A model built without class names (class1, class2, ...) only needs the same number of classes.
    """
    ours = tuple(getattr(getattr(model, "module", model), "class_names", None) or ())
    theirs = tuple(dataset.class_names)
    unnamed = ours == default_class_names(len(ours)) and len(ours) == len(theirs)
    if not ours or ours == theirs or unnamed:
        return
    raise DataError(f"{where} detects {class_list(ours)} but {dataset.name} has {class_list(theirs)}; "
                    "evaluate it on data with the same class list (DATASETS.TEST), or train a model on these classes")


@torch.no_grad()
def predict(model: nn.Module, dataset, cfg: CfgNode, device: torch.device | str = "cpu",
            progress: bool = True) -> dict[int, dict]:
    """Detections for every image of dataset, boxes in original-image pixels, keyed by index.

    Under torchrun each rank predicts its share and the shares are gathered, so every rank
    ends with the detections of the whole dataset.
    """
    check_classes(model, dataset)
    model = getattr(model, "module", model)
    was_training = model.training
    model.eval()
    size = cfg.INPUT.IMAGE_SIZE
    mine: dict[int, dict] = {}
    loader = make_test_loader(cfg, dataset, dist.rank(), dist.world_size())
    for images, _targets, indices in tqdm(loader, desc="eval", disable=not (progress and dist.is_main()),
                                          leave=False):
        for index, det in zip(indices, model(images.to(device))):
            info = dataset.get_img_info(index)
            scale = torch.tensor([info["width"], info["height"]] * 2, dtype=torch.float32) / size
            mine[index] = {"boxes": det["boxes"].cpu() * scale, "labels": det["labels"].cpu(),
                           "scores": det["scores"].cpu()}
    model.train(was_training)
    merged: dict[int, dict] = {}
    for part in dist.all_gather_object(mine):
        merged.update(part)
    return merged


def score(dataset, predictions: dict[int, dict], cfg: CfgNode, coco_json: str | Path | None = None) -> dict:
    """VOC mAP@0.5 (the configured AP definition) and COCO AP of predictions on dataset."""
    voc = evaluate_voc(dataset, predictions, iou_threshold=0.5, use_07_metric=cfg.TEST.USE_07_METRIC)
    coco = evaluate_coco(dataset, predictions, results_json=coco_json)
    return {"voc": voc, "coco": coco, "voc_map": voc["map"], "coco_ap": coco["AP"]}


def evaluate_model(model: nn.Module, dataset, cfg: CfgNode, device: torch.device | str = "cpu",
                   coco_json: str | Path | None = None) -> dict:
    """Predict on dataset and score the detections once, on rank 0; every rank gets the numbers."""
    predictions = predict(model, dataset, cfg, device)
    result = dist.broadcast_object(score(dataset, predictions, cfg, coco_json) if dist.is_main() else None)
    log.info("%s = %.4f, %s = %.4f", result["voc"]["metric"], result["voc_map"],
             result["coco"]["metric"], result["coco_ap"])
    return result
