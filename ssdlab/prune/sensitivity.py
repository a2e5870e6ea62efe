"""Sensitivity scan: prune one channel group at a time at several ratios and measure the mAP.

Each group keeps its top-|γ| channels (the same ranking the global threshold uses), the rest
are masked with compensation, and the masked model is evaluated. Groups whose mAP falls
fastest deserve a lower share of the pruning; the notebook plots the table.

    rows = sensitivity_scan(model, dataset, cfg, ratios=(0.5, 0.9))
"""
from __future__ import annotations

import numpy as np
from tqdm.auto import tqdm

from ssdlab.config import CfgNode
from ssdlab.engine.inference import evaluate_model
from ssdlab.model.ssd import SSD
from ssdlab.prune.plan import Group, ModelSpec, plan_for_kept, prunable_groups
from ssdlab.prune.surgery import masked_model, plan_gammas


def top_channels(group: Group, gammas: dict[int, np.ndarray], ratio: float) -> np.ndarray:
    """Indices of the channels a group keeps when `ratio` of them are pruned (at least one)."""
    score = np.max([gammas[i] for i in group.producers], axis=0)
    count = max(1, int(round(group.width * (1.0 - ratio))))
    return np.sort(np.lexsort((np.arange(group.width), -score))[:count])


def sensitivity_scan(model: SSD, dataset, cfg: CfgNode, mode: str = "normal",
                     ratios: tuple[float, ...] = (0.25, 0.5, 0.75, 0.9), progress: bool = True) -> list[dict]:
    """One row per (group, ratio): layers, width, channels kept, VOC mAP@0.5 and its drop."""
    model = model.eval()
    spec = ModelSpec.from_model(model)
    gammas = plan_gammas(model)
    base = evaluate_model(model, dataset, cfg)["voc_map"]
    groups = prunable_groups(spec.layers, mode, spec.in_channels)
    rows = []
    with tqdm(total=len(groups) * len(ratios), desc="sensitivity", disable=not progress) as bar:
        for group in groups:
            for ratio in ratios:
                keep = top_channels(group, gammas, ratio)
                result = plan_for_kept(spec, mode, {group.members[0]: keep}, percent=ratio)
                score = evaluate_model(masked_model(model, result, "compensated"), dataset, cfg)["voc_map"]
                rows.append({"layers": list(group.producers), "layer": group.producers[0], "width": group.width,
                             "ratio": ratio, "kept": len(keep), "params_after": result.params_after,
                             "voc_map": score, "drop": base - score, "baseline": base})
                bar.update(1)
    return rows
