"""Sparse-train and prune the course models; record params, MACs, CPU latency and mAP of every step.

    python benchmarks/pruning.py                       # both course models, writes RESULTS.md
    python benchmarks/pruning.py --models plain --percents 0.5 0.7

For each model: evaluate the committed baseline, sparse-train it (course/<model>_sparse.yaml,
resumed when benchmarks/runs/<model>_sparse exists), prune at each percent (no fine-tune;
with --max 1 past the highest safe percent), once with --regular 1, and fine-tune the pruned model at --tune-percent with and without
distillation from the sparse model. Also counts MobileNetV2-SSDLite's prunable layers and
channels per mode. Rows are kept in benchmarks/pruning.json; the section between the pruning
markers of benchmarks/RESULTS.md is rewritten.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from ssdlab.config import PACKAGE_CONFIGS
from ssdlab.course import COURSE_MODELS, PROFILES, baseline, course_config
from ssdlab.data.shapes import generate_shapes
from ssdlab.engine import checkpoint as ckpt
from ssdlab.engine.inference import evaluate_model
from ssdlab.engine.profile import measure_latency
from ssdlab.engine.train import datasets, train
from ssdlab.model.cfg import infer_channels, read_cfg
from ssdlab.prune.plan import MODES, prunable_layers
from ssdlab.prune.report import prune_checkpoint
from ssdlab.prune.surgery import make_plan

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_md import machine, write_section  # noqa: E402

HERE = Path(__file__).resolve().parent
START, END = "<!-- pruning:start -->", "<!-- pruning:end -->"


def sparse_train(model: str, runs: Path, start: Path, sr: float | None):
    """Sparse-train from `start` (resumes a stopped run); the checkpoint and its config."""
    extra = ["PRUNE.SR", str(sr)] if sr else []
    name = f"{model}_sparse" + (f"_sr{sr:g}" if sr else "")
    cfg = course_config(model, "full", ["MODEL.WEIGHTS", str(start), "OUTPUT_DIR", str(runs / name), *extra],
                        step="sparse")
    return train(cfg).checkpoint, cfg


def prune_row(model: str, sparse: Path, cfg, percent: float, regular: bool, runs: Path, drop_levels: bool) -> dict:
    """Prune once (no fine-tune) and keep the report's numbers."""
    report = prune_checkpoint(sparse, cfg, percent, cfg.PRUNE.TYPE, regular=regular, drop_levels=drop_levels,
                              quick=True, out_dir=runs / "pruned" / sparse.parent.name, dataset=datasets(cfg, False))
    original, compact = report.rows[0], report.rows[-1]
    return {"model": model, "mode": cfg.PRUNE.TYPE, "percent": percent, "regular": regular, "max": drop_levels,
            "levels": report.plan.levels,
            "params": compact["params"], "params_before": original["params"],
            "compression": 1 - compact["params"] / original["params"], "macs": compact["macs"],
            "macs_before": original["macs"], "ms": compact["latency_ms"], "ms_before": original["latency_ms"],
            "voc_map": compact["voc_map"], "voc_before": original["voc_map"], "coco_ap": compact["coco_ap"],
            "checkpoint": str(report.files["checkpoint"]), "highest_safe": report.plan.highest_safe}


def fine_tune(model: str, pruned: Path, teacher: Path | None, runs: Path, iterations: int) -> dict:
    """Fine-tune a pruned model (optionally distilled from the teacher); its final metrics."""
    name = f"{model}_tuned_{'distilled' if teacher else 'plain'}"
    cfg = course_config(model, "full", ["MODEL.FINE_TUNE", "True", "MODEL.WEIGHTS", str(pruned),
                                        "PRUNE.TYPE", "no", "SOLVER.LR", "0.0005", "SOLVER.MAX_ITER", str(iterations),
                                        "SOLVER.WARMUP_ITERS", "20", "SOLVER.CHECKPOINT_PERIOD", "0",
                                        "DISTILL.TEACHER", str(teacher or ""), "OUTPUT_DIR", str(runs / name)])
    result = train(cfg, resume=False)
    return {"model": model, "distilled": teacher is not None, "iterations": iterations,
            "voc_map": result.metrics["voc_map"], "coco_ap": result.metrics["coco_ap"],
            "minutes": result.train_seconds / 60}


def remeasure_latency(results: dict, runs: int = 30) -> None:
    """Measure every row's latency again, one model at a time (for a machine that was busy during the runs)."""
    for r in results.values():
        sparse = ckpt.load(r["sparse_checkpoint"])
        size = sparse.cfg.INPUT.IMAGE_SIZE
        before = measure_latency(sparse, size, runs=runs)["median_ms"]
        for p in r["prune"]:
            p["ms"] = measure_latency(ckpt.load(p["checkpoint"]), size, runs=runs)["median_ms"]
            p["ms_before"] = before


def mobilenet_counts() -> dict:
    """Prunable layers and channels of MobileNetV2-SSDLite in each mode."""
    layers = read_cfg(PACKAGE_CONFIGS / "backbones" / "mobilenet_v2_ssd.cfg")
    widths = infer_channels(layers)
    return {mode: {"layers": len(prunable_layers(layers, mode)),
                   "channels": sum(widths[i] for i in prunable_layers(layers, mode))} for mode in MODES}


def evaluate_baseline(model: str, start: Path) -> dict:
    """VOC and COCO metrics of the dense starting model on the val split."""
    net = ckpt.load(start)
    cfg = course_config(model, "full")
    result = evaluate_model(net, datasets(cfg, False), cfg)
    return {"voc_map": result["voc_map"], "coco_ap": result["coco_ap"]}


def run_model(model: str, percents: list[float], tune_percent: float, tune_iters: int, runs: Path,
              start: Path, sr: float | None) -> dict:
    """Every step for one course model."""
    base = evaluate_baseline(model, start)
    sparse, cfg = sparse_train(model, runs, start, sr)
    safe = make_plan(ckpt.load(sparse), 0.0, cfg.PRUNE.TYPE).highest_safe
    rows = [prune_row(model, sparse, cfg, p, False, runs, p > safe) for p in percents]  # --max 1 past the safe ratio
    chosen = min(percents, key=lambda p: abs(p - tune_percent))
    rows.append(prune_row(model, sparse, cfg, chosen, True, runs, chosen > safe))
    pruned = Path(next(r["checkpoint"] for r in rows if r["percent"] == chosen and not r["regular"]))
    tuned = [fine_tune(model, pruned, None, runs, tune_iters), fine_tune(model, pruned, sparse, runs, tune_iters)]
    return {"start": str(start), "sparse_checkpoint": str(sparse), "baseline": base, "highest_safe": safe, "prune": rows, "tuned": tuned, "tune_percent": chosen,
            "sparse_config": {"SR": cfg.PRUNE.SR, "TYPE": cfg.PRUNE.TYPE, "MAX_ITER": cfg.SOLVER.MAX_ITER,
                              "LR": cfg.SOLVER.LR}}


def table(results: dict, counts: dict, command: str) -> str:
    """The RESULTS.md section."""
    lines = [START, "## Pruning the course models (network slimming, no fine-tune unless stated)", "",
             f"Machine: {machine()}; CPU latency is batch 1 on {torch.get_num_threads()} threads, re-measured "
             f"on an idle machine with `{command}` (median of 30).", ""]
    for model, r in results.items():
        sc = r["sparse_config"]
        lines += [f"### {model}", "", f"Command: `{r.get('command', '')}`", "",
                  f"Dense start `{r['start']}`: VOC mAP@0.5 {r['baseline']['voc_map']:.4f}, "
                  f"COCO AP {r['baseline']['coco_ap']:.4f}. "
                  f"Sparse training: PRUNE.TYPE {sc['TYPE']}, SR {sc['SR']}, {sc['MAX_ITER']} iterations at LR {sc['LR']} "
                  f"from the baseline; highest safe percent {r['highest_safe']:.3f}.", "",
                  "| percent | regular | max (levels kept) | params | removed | MACs (M) | CPU ms | "
                  "VOC mAP@0.5 (sparse → pruned) | COCO AP |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for p in r["prune"]:
            lines.append(f"| {p['percent']:g} | {int(p['regular'])} | {int(p['max'])} ({p['levels']}) | "
                         f"{p['params_before']:,} → {p['params']:,} | "
                         f"{p['compression']:.1%} | {p['macs_before'] / 1e6:.1f} → {p['macs'] / 1e6:.1f} | "
                         f"{p['ms_before']:.1f} → {p['ms']:.1f} | {p['voc_before']:.4f} → {p['voc_map']:.4f} | "
                         f"{p['coco_ap']:.4f} |")
        lines += ["", f"Fine-tuning the model pruned at {r['tune_percent']:g}:", ""]
        for t in r["tuned"]:
            how = "distilled from the sparse model" if t["distilled"] else "plain"
            lines.append(f"- {t['iterations']} iterations, {how}: VOC mAP@0.5 {t['voc_map']:.4f}, "
                         f"COCO AP {t['coco_ap']:.4f} ({t['minutes']:.1f} min)")
        lines.append("")
    lines += ["### MobileNetV2-SSDLite: what each mode can prune", "",
              "| mode | prunable layers | prunable channels |", "|---|---|---|"]
    for mode, c in counts.items():
        lines.append(f"| {mode} | {c['layers']} | {c['channels']:,} |")
    ratio = counts["coupled"]["channels"] / counts["normal"]["channels"]
    lines += ["", f"Depthwise-coupled pruning with shortcut chains reaches {ratio:.1f}x the channels of the seed's "
              "normal mode (7 layers).", END]
    return "\n".join(lines)


def main() -> None:
    """Parse arguments, run, write RESULTS.md."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(COURSE_MODELS), choices=COURSE_MODELS)
    parser.add_argument("--percents", nargs="+", type=float, default=[0.3, 0.4, 0.5, 0.55, 0.6, 0.7, 0.8])
    parser.add_argument("--tune-percent", type=float, default=0.6)
    parser.add_argument("--tune-iters", type=int, default=500)
    parser.add_argument("--start", type=Path, help="dense checkpoint to sparse-train (default: the committed baseline)")
    parser.add_argument("--sr", type=float, help="PRUNE.SR instead of the recipe's (the run is kept apart)")
    parser.add_argument("--latency", action="store_true",
                        help="only re-measure the stored rows' CPU latency (run on an otherwise idle machine)")
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument("--runs", type=Path, default=HERE / "runs")
    args = parser.parse_args()
    settings = PROFILES["full"]
    generate_shapes(Path(settings["data"]), n_train=settings["train"], n_val=settings["val"])
    store = HERE / "pruning.json"
    results = json.loads(store.read_text()) if store.exists() else {}
    if args.latency:
        remeasure_latency(results)
        store.write_text(json.dumps(results, indent=1) + "\n")
        args.models = []
    for model in args.models:
        key = model + (f" (SR {args.sr:g})" if args.sr else "")
        results[key] = run_model(model, args.percents, args.tune_percent, args.tune_iters, args.runs,
                                 args.start or baseline(model), args.sr)
        results[key]["command"] = "python " + " ".join(sys.argv)
        store.write_text(json.dumps(results, indent=1) + "\n")
    section = table(dict(sorted(results.items())), mobilenet_counts(), "python benchmarks/pruning.py --latency")
    write_section(section, args.out, START, END)
    print(section)


if __name__ == "__main__":
    main()
