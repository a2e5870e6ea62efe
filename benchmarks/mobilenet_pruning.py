"""Depthwise-coupled pruning on MobileNetV2-SSDLite: one coupled-sparse model pruned in each mode.

    python benchmarks/mobilenet_pruning.py            # train, sparse-train, prune; writes RESULTS.md

The course models have no depthwise convs, so this trains MobileNetV2-SSDLite (the seed's
mobile_v2_ssd_voc0712.yaml, from scratch, at 192 px with the course priors scaled to it) on the
shapes data, sparse-trains it with PRUNE.TYPE coupled (the L1 penalty on every prunable γ), and
prunes that one model at each percent in the modes normal, shortcut and coupled (no fine-tune), so
the rows show what each mode can remove from the same network. The runs are stages like the course's
(runs/mobilenet-<digest>, runs/mobilenet_sparse-<digest>), reused when they have finished. One JSON
record per model (dense, sparse, each pruned one; commit, machine, CPU flags, digests) in
benchmarks/mobilenet_pruning.jsonl; the section between the mobilenet-pruning markers of
benchmarks/RESULTS.md is generated from them.

    python benchmarks/mobilenet_pruning.py --only summary   # the section again from the records
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ssdlab.config import PACKAGE_CONFIGS, CfgNode, load_config
from ssdlab.engine import checkpoint as ckpt
from ssdlab.course import in_stage, train_recipe
from ssdlab.model.cfg import parse_cfg, read_backbone_text
from ssdlab.model.ssd import feature_sizes
from ssdlab.prune.plan import MODES
from ssdlab.prune.surgery import make_plan

sys.path.insert(0, str(Path(__file__).resolve().parent))
from profiles import FULL, BenchProfile, at_root  # noqa: E402
from pruning import prune_row  # noqa: E402
from records import checkpoint_fields, context, measured, regenerate, write_records  # noqa: E402

HERE = Path(__file__).resolve().parent
START, END = "<!-- mobilenet-pruning:start -->", "<!-- mobilenet-pruning:end -->"
COURSE_PRIORS = ([9, 18, 32, 52, 76, 104], [18, 32, 52, 76, 104, 128])  # MIN/MAX_SIZES of the 128 px course models
SHAPES_RECIPE = [  # MobileNetV2-SSDLite on the shapes data: the course solver and augmentation
    "MODEL.NUM_CLASSES", "6", "MODEL.BACKBONE.PRETRAINED", "False", "INPUT.EXPAND_MAX_RATIO", "1.0",
    "INPUT.CROP", "False", "SOLVER.OPTIMIZER", "AdamW", "SOLVER.SCHEDULER", "cosine", "SOLVER.LR", "0.004",
    "SOLVER.WEIGHT_DECAY", "0.01", "SOLVER.BATCH_SIZE", "16", "SOLVER.WARMUP_ITERS", "100",
    "SOLVER.CHECKPOINT_PERIOD", "500", "SOLVER.LOG_PERIOD", "50", "SOLVER.CHANNELS_LAST", "True",
    "DATA_LOADER.NUM_WORKERS", "1"]


def priors_for(size: int) -> list[str]:
    """MODEL.PRIORS overrides for MobileNetV2-SSDLite at `size` px: its map sizes, the course priors scaled."""
    base = load_config(PACKAGE_CONFIGS / "mobile_v2_ssd_voc0712.yaml")
    maps = [h for h, _ in feature_sizes(parse_cfg(read_backbone_text(base)[0]), size, 3)]
    scaled = [[round(s * size / 128) for s in sizes] for sizes in COURSE_PRIORS]
    return ["INPUT.IMAGE_SIZE", str(size), "MODEL.PRIORS.FEATURE_MAPS", str(maps),
            "MODEL.PRIORS.STRIDES", str([round(size / m) for m in maps]),
            "MODEL.PRIORS.MIN_SIZES", str(scaled[0]), "MODEL.PRIORS.MAX_SIZES", str(scaled[1])]


def mobilenet_config(profile: BenchProfile, stage: str, iterations: int, extra: list[str] | None = None) -> CfgNode:
    """MobileNetV2-SSDLite on the profile's shapes data (with the profile's solver overrides), run in the course
    profile's <root>/<stage>-<digest>."""
    cfg = load_config(PACKAGE_CONFIGS / "mobile_v2_ssd_voc0712.yaml",
                      [*SHAPES_RECIPE, *priors_for(profile.mobilenet_size), "DATASETS.TRAIN",
                       f"['{profile.data}:train']", "DATASETS.TEST", f"['{profile.data}:val']",
                       *profile.overrides(iterations), *(extra or [])])
    return in_stage(cfg, stage, profile.course)


def run(command: str, profile: BenchProfile = FULL) -> list[dict]:
    """Train dense, sparse-train (coupled), prune in every mode (finished stages reused); one record per model."""
    dense_iters, sparse_iters = profile.mobilenet_iters
    dense = train_recipe(mobilenet_config(profile, "mobilenet", dense_iters))
    cfg = mobilenet_config(profile, "mobilenet_sparse", sparse_iters, [
        "MODEL.FINE_TUNE", "True", "MODEL.WEIGHTS", str(dense.checkpoint), "PRUNE.TYPE", "coupled",
        "PRUNE.SR", "0.005", "SOLVER.LR", "0.002", "SOLVER.WARMUP_ITERS", str(min(50, sparse_iters // 4))])
    sparse = train_recipe(cfg)
    model = ckpt.load(sparse.checkpoint)
    safe = {mode: make_plan(model, 0.0, mode).highest_safe for mode in MODES}
    rows = [prune_row("mobilenet", sparse.checkpoint, cfg, p, False, p > safe[mode], mode)
            for p in profile.mobilenet_percents for mode in MODES]
    shared = {**context("mobilenet_pruning", profile.course), "command": command, "image_size": cfg.INPUT.IMAGE_SIZE,
              "threads": torch.get_num_threads()}
    trained = [{**shared, "row": row, **checkpoint_fields(result.checkpoint), "voc_map": result.metrics["voc_map"],
                "coco_ap": result.metrics["coco_ap"], "iterations": iterations, "minutes": result.train_seconds / 60,
                "reused": result.reused}
               for row, result, iterations in (("dense", dense, dense_iters), ("sparse", sparse, sparse_iters))]
    trained[1]["highest_safe"] = safe
    return trained + [{**shared, "row": "pruned", **r} for r in rows]  # prune_row has the digests


def table(records: list[dict]) -> str:
    """The RESULTS.md section, generated from the records alone."""
    d, s = (next(r for r in records if r["row"] == row) for row in ("dense", "sparse"))
    safe = ", ".join(f"{mode} {p:.3f}" for mode, p in s["highest_safe"].items())
    lines = [START, "## Depthwise-coupled pruning: MobileNetV2-SSDLite on the shapes dataset", "",
             "Generated from `benchmarks/mobilenet_pruning.jsonl`. Measured: "
             + measured(records) + f"; CPU latency batch 1, torch threads: "
             f"{d['threads']}.", f"Command: `{d['command']}`", "",
             f"MobileNetV2-SSDLite ({d['image_size']} px, no ImageNet weights) trained {d['iterations']} "
             f"iterations from scratch ({d['minutes']:.1f} min): VOC mAP@0.5 {d['voc_map']:.4f}, COCO AP "
             f"{d['coco_ap']:.4f}; sparse-trained {s['iterations']} iterations with PRUNE.TYPE coupled, SR 0.005 "
             f"({s['minutes']:.1f} min): VOC mAP@0.5 {s['voc_map']:.4f}, COCO AP {s['coco_ap']:.4f}. "
             f"Highest safe percent: {safe}.", "",
             "| percent | mode | max (levels kept) | params | removed | MACs (M) | CPU ms | "
             "VOC mAP@0.5 (sparse → pruned) | COCO AP |", "|---|---|---|---|---|---|---|---|---|"]
    for p in (r for r in records if r["row"] == "pruned"):
        lines.append(f"| {p['percent']:g} | {p['mode']} | {int(p['max'])} ({p['levels']}) | "
                     f"{p['params_before']:,} → {p['params']:,} | {p['compression']:.1%} | "
                     f"{p['macs_before'] / 1e6:.1f} → {p['macs'] / 1e6:.1f} | "
                     f"{p['ms_before']:.1f} → {p['ms']:.1f} | "
                     f"{p['voc_before']:.4f} → {p['voc_map']:.4f} | {p['coco_ap']:.4f} |")
    lines += ["", "The same sparse model in every row: `normal` prunes only convs whose output no shortcut or "
              "depthwise conv shares, `shortcut` adds the residual chains, `coupled` also the expand convs with "
              "their depthwise convs.", END]
    return "\n".join(lines)


def run_all(store: Path, results: Path, command: str, profile: BenchProfile = FULL) -> str:
    """Run, write the records, rewrite the RESULTS.md section and return it."""
    profile.prepare_data()
    write_records(run(command, profile), store)
    return regenerate(table, store, results, (START, END))


def main() -> None:
    """Parse arguments, run, write RESULTS.md."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument("--only", choices=["summary"], help="regenerate the RESULTS.md section from the records")
    args = parser.parse_args()
    store, command = HERE / "mobilenet_pruning.jsonl", "python " + " ".join(sys.argv)
    print(regenerate(table, store, args.out, (START, END)) if args.only else run_all(store, args.out, command, at_root(FULL)))


if __name__ == "__main__":
    main()
