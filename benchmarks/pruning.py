"""Sparse-train and prune the course models; record params, MACs, CPU latency and mAP of every step.

    python benchmarks/pruning.py                       # both course models, writes RESULTS.md
    python benchmarks/pruning.py --models plain --percents 0.5 0.7

For each model: evaluate the committed baseline, sparse-train it (course/<model>_sparse.yaml), prune
at each percent (no fine-tune; with --max 1 past the highest safe percent), once with --regular 1,
and fine-tune the pruned model at --tune-percent (default 0.6 plain, 0.5 residual) with and without
distillation from the sparse model. Every run is a course stage (ssdlab.course): the sparse run is
notebook 02's runs/<model>_sparse-<digest> when the recipe is the course's, the pruned models lie
beside it, and a finished stage is reused rather than trained again. Also counts
MobileNetV2-SSDLite's prunable layers and channels per mode. One JSON record per model of a sparse
run (the sparse model, each pruned and fine-tuned one: commit, machine, CPU flags, weights and
config digests) in benchmarks/pruning.jsonl; the section between the pruning markers of
benchmarks/RESULTS.md is generated from those records alone.

    python benchmarks/pruning.py --only summary        # the section again from the records
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import torch

from ssdlab.config import PACKAGE_CONFIGS, CfgNode
from ssdlab.course import (COURSE_MODELS, baseline, course_config, prune_stage, sparse_config, train_recipe,
                           tune_config)
from ssdlab.data.catalog import datasets
from ssdlab.engine import checkpoint as ckpt
from ssdlab.engine.inference import evaluate_model
from ssdlab.engine.profile import measure_latency
from ssdlab.model.cfg import infer_channels, read_cfg
from ssdlab.prune.plan import MODES, prunable_layers
from ssdlab.prune.surgery import make_plan

sys.path.insert(0, str(Path(__file__).resolve().parent))
from profiles import FULL, BenchProfile, at_root  # noqa: E402
from records import CONTEXT, checkpoint_fields, context, measured, read_records, regenerate, write_records  # noqa: E402
from results_md import ROOT, display  # noqa: E402

HERE = Path(__file__).resolve().parent
START, END = "<!-- pruning:start -->", "<!-- pruning:end -->"
LATENCY_RUNS = 30  # the prune report's interleaved timing of the sparse and the pruned model


def run_key(model: str, sr: float | None, weight: str = "none") -> str:
    """The store key of one sparse run: the model, and the SR and its weighting when not the recipe's."""
    changes = ([f"SR {sr:g}"] if sr else []) + ([f"{weight}-weighted"] if weight != "none" else [])
    return model + (f" ({', '.join(changes)})" if changes else "")


def sparse_recipe(model: str, start: Path, sr: float | None, weight: str = "none", profile: BenchProfile = FULL):
    """The sparse training from `start` (SR and its weighting when not the recipe's) in its course stage:
    <model>_sparse-<digest>, notebook 02's run, for the course's own recipe."""
    extra = (["PRUNE.SR", str(sr)] if sr else []) + ["PRUNE.SR_WEIGHT", weight]
    name = f"{model}_sparse" + (f"_sr{sr:g}" if sr else "") + (f"_{weight}" if weight != "none" else "")
    return sparse_config(model, profile.course, start, [*profile.overrides(profile.sparse_iters), *extra], stage=name)


def sparse_train(model: str, start: Path, sr: float | None, weight: str = "none", profile: BenchProfile = FULL):
    """Sparse-train (reused or resumed when its stage exists); the TrainResult and its config."""
    cfg = sparse_recipe(model, start, sr, weight, profile)
    return train_recipe(cfg), cfg


def prune_row(model: str, sparse: Path, cfg: CfgNode, percent: float, regular: bool, drop_levels: bool,
              mode: str | None = None) -> dict:
    """Prune once beside the sparse model (course.prune_stage, no fine-tune) and keep the report's numbers."""
    mode = mode or cfg.PRUNE.TYPE
    report = prune_stage(sparse, cfg, percent, mode, datasets(cfg, False), quick=True,
                         round_to=cfg.PRUNE.ROUND_TO if regular else 1, drop_levels=drop_levels)
    original, compact = report.rows[0], report.rows[-1]
    return {"model": model, "mode": mode, "percent": percent, "regular": regular, "max": drop_levels,
            "levels": report.plan.levels,
            "params": compact["params"], "params_before": original["params"],
            "compression": 1 - compact["params"] / original["params"], "macs": compact["macs"],
            "macs_before": original["macs"], "ms": compact["latency_ms"], "ms_before": original["latency_ms"],
            "size_mib": compact["size_mib"], "size_before": original["size_mib"],
            "voc_map": compact["voc_map"], "voc_before": original["voc_map"], "coco_ap": compact["coco_ap"],
            "coco_before": original["coco_ap"],
            **checkpoint_fields(report.files["checkpoint"]), "highest_safe": report.plan.highest_safe}


def fine_tune(model: str, pruned: Path, teacher: Path | None, iterations: int, profile: BenchProfile = FULL) -> dict:
    """Fine-tune a pruned model (optionally distilled from the teacher) in its course stage
    (ssdlab.course.tune_stage, shared with notebook 04); its final metrics."""
    cfg = tune_config(pruned, iterations, profile.course, teacher, model, extra=profile.overrides(iterations))
    result = train_recipe(cfg)
    return {"model": model, "distilled": teacher is not None, "iterations": iterations, "reused": result.reused,
            "voc_map": result.metrics["voc_map"], "coco_ap": result.metrics["coco_ap"],
            "minutes": result.train_seconds / 60, **checkpoint_fields(result.checkpoint)}


def to_records(results: dict[str, dict]) -> list[dict]:
    """The sparse runs as records: per run its sparse model, then each pruned and each fine-tuned model."""
    records = []
    for key, r in results.items():
        shared = {k: r[k] for k in (*CONTEXT, "command")} | {"run": key}
        sparse = {k: v for k, v in r.items() if k not in (*CONTEXT, "command", "prune", "tuned")}
        records += [{**shared, "row": "sparse", **sparse},
                    *({**shared, "row": "pruned", **p} for p in r["prune"]),
                    *({**shared, "row": "tuned", **t} for t in r["tuned"])]
    return records


def from_records(records: list[dict]) -> dict[str, dict]:
    """The records as {run key: the sparse run with its 'prune' and 'tuned' lists}."""
    def rows(key: str, kind: str) -> list[dict]:
        return [{k: v for k, v in r.items() if k not in (*CONTEXT, "command", "run", "row")} for r in records
                if r["run"] == key and r["row"] == kind]
    return {r["run"]: {**{k: v for k, v in r.items() if k not in ("run", "row")}, "prune": rows(r["run"], "pruned"),
                       "tuned": rows(r["run"], "tuned")} for r in records if r["row"] == "sparse"}


def remeasure_latency(results: dict, profile: str, runs: int = 30) -> None:
    """Measure every row's latency again, one model at a time (for a machine that was busy during the runs)."""
    for r in results.values():
        r.update(context("pruning", profile), threads=torch.get_num_threads(), latency_runs=runs)
        sparse = ckpt.load(ROOT / r["sparse_checkpoint"])
        size = sparse.cfg.INPUT.IMAGE_SIZE
        before = measure_latency(sparse, size, runs=runs)["median_ms"]
        for p in r["prune"]:
            p["ms"] = measure_latency(ckpt.load(ROOT / p["checkpoint"]), size, runs=runs)["median_ms"]
            p["ms_before"] = before


def mobilenet_counts() -> dict:
    """Prunable layers and channels of MobileNetV2-SSDLite in each mode."""
    layers = read_cfg(PACKAGE_CONFIGS / "backbones" / "mobilenet_v2_ssd.cfg")
    widths = infer_channels(layers)
    return {mode: {"layers": len(prunable_layers(layers, mode)),
                   "channels": sum(widths[i] for i in prunable_layers(layers, mode))} for mode in MODES}


def evaluate_baseline(model: str, start: Path, profile: BenchProfile = FULL) -> dict:
    """VOC and COCO metrics of the dense starting model on the val split."""
    net = ckpt.load(start)
    cfg = course_config(model, profile.course, profile.overrides())
    result = evaluate_model(net, datasets(cfg, False), cfg)
    return {"voc_map": result["voc_map"], "coco_ap": result["coco_ap"]}


def run_model(model: str, percents: list[float], tune_percent: float, tune_iters: int, start: Path, base: dict,
              sr: float | None, weight: str = "none", profile: BenchProfile = FULL) -> dict:
    """Every step for one course model from its dense start (whose metrics are `base`)."""
    trained, cfg = sparse_train(model, start, sr, weight, profile)
    sparse = trained.checkpoint
    safe = make_plan(ckpt.load(sparse), 0.0, cfg.PRUNE.TYPE).highest_safe
    rows = [prune_row(model, sparse, cfg, p, False, p > safe) for p in percents]  # --max 1 past the safe ratio
    chosen = min(percents, key=lambda p: abs(p - tune_percent))
    rows.append(prune_row(model, sparse, cfg, chosen, True, chosen > safe))
    pruned = ROOT / next(r["checkpoint"] for r in rows if r["percent"] == chosen and not r["regular"])
    tuned = [fine_tune(model, pruned, None, tune_iters, profile), fine_tune(model, pruned, sparse, tune_iters, profile)]
    return {**context("pruning", profile.course), **checkpoint_fields(sparse), "start": display(start),
            "sparse_checkpoint": display(sparse), "baseline": base, "highest_safe": safe,
            "threads": torch.get_num_threads(), "latency_runs": LATENCY_RUNS,
            "sparse": {"voc_map": trained.metrics.get("voc_map"), "coco_ap": trained.metrics.get("coco_ap"),
                       "minutes": trained.train_seconds / 60, "reused": trained.reused},
            "prune": rows, "tuned": tuned, "tune_percent": chosen,
            "sparse_config": {"SR": cfg.PRUNE.SR, "SR_WEIGHT": cfg.PRUNE.SR_WEIGHT, "TYPE": cfg.PRUNE.TYPE,
                              "MAX_ITER": cfg.SOLVER.MAX_ITER, "LR": cfg.SOLVER.LR}}


def table(results: dict, counts: dict) -> str:
    """The RESULTS.md section, generated from the records alone."""
    lines = [START, "## Pruning the course models (network slimming, no fine-tune unless stated)", "",
             "Generated from `benchmarks/pruning.jsonl`. Measured: "
             + measured(list(results.values()))
             + "; CPU latency is batch 1, re-measured one model after another at the end of each run (median of "
             f"{', '.join(sorted({str(r['latency_runs']) for r in results.values()}))}, threads "
             f"{', '.join(sorted({str(r['threads']) for r in results.values()}))}).", ""]
    for model, r in results.items():
        sc = r["sparse_config"]
        lines += [f"### {model}", "", f"Command: `{r.get('command', '')}`", "",
                  f"Dense start `{r['start']}`: VOC mAP@0.5 {r['baseline']['voc_map']:.4f}, "
                  f"COCO AP {r['baseline']['coco_ap']:.4f}. "
                  f"Sparse training: PRUNE.TYPE {sc['TYPE']}, SR {sc['SR']}"
                  + (f" (SR_WEIGHT {sc['SR_WEIGHT']})" if sc.get("SR_WEIGHT", "none") != "none" else "")
                  + f", {sc['MAX_ITER']} iterations at "
                  f"LR {sc['LR']} from the baseline; highest safe percent {r['highest_safe']:.3f}.", "",
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


def run_all(runs_wanted: list[tuple[str, float | None, str]], starts: dict[str, Path], store: Path, results: Path,
            command: str, profile: BenchProfile = FULL, percents: list[float] | None = None,
            tune_percent: float | None = None, remeasure: bool = False) -> str:
    """Run each (model, SR, SR weighting) and keep it in the JSON store (remeasure: then time every stored model again,
    one after the other); rewrite the RESULTS.md section and return it."""
    profile.prepare_data()
    results_json = from_records(read_records(store))
    bases = {model: evaluate_baseline(model, starts[model], profile) for model, *_ in runs_wanted}
    for model, sr, weight in runs_wanted:
        tune = tune_percent if tune_percent is not None else profile.tune_percent[model]
        key = run_key(model, sr, weight)
        results_json[key] = run_model(model, list(percents or profile.percents), tune, profile.tune_iters,
                                      starts[model], bases[model], sr, weight, profile)
        results_json[key]["command"] = command
        write_records(to_records(results_json), store)
    if remeasure:
        remeasure_latency(results_json, profile.course, profile.latency_runs)
        write_records(to_records(results_json), store)
    return regenerate(section, store, results, (START, END))


def section(records: list[dict]) -> str:
    """The RESULTS.md section of the stored records, the sparse runs in the order of their keys."""
    return table(dict(sorted(from_records(records).items())), mobilenet_counts())


def main() -> None:
    """Parse arguments, run, write RESULTS.md."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(COURSE_MODELS), choices=COURSE_MODELS)
    parser.add_argument("--percents", nargs="+", type=float, default=list(FULL.percents))
    parser.add_argument("--tune-percent", type=float, help="percent to fine-tune at (default: 0.6 plain, 0.5 residual)")
    parser.add_argument("--tune-iters", type=int, default=FULL.tune_iters)
    parser.add_argument("--start", type=Path, help="dense checkpoint to sparse-train (default: the committed baseline)")
    parser.add_argument("--sr", type=float, help="PRUNE.SR instead of the recipe's (the run is kept apart)")
    parser.add_argument("--sr-weight", choices=("none", "params"), default="none",
                        help="PRUNE.SR_WEIGHT (params: cost-aware sparsity; the run is kept apart)")
    parser.add_argument("--latency", action="store_true",
                        help="only re-measure the stored rows' CPU latency (run on an otherwise idle machine)")
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument("--only", choices=["summary"], help="regenerate the RESULTS.md section from the records")
    args = parser.parse_args()
    store = HERE / "pruning.jsonl"
    if args.only:
        print(regenerate(section, store, args.out, (START, END)))
        return
    if args.latency:
        results = from_records(read_records(store))
        remeasure_latency(results, "full")
        write_records(to_records(results), store)
        args.models = []
    starts = {model: args.start.resolve() if args.start else baseline(model) for model in args.models}
    profile = at_root(replace(FULL, tune_iters=args.tune_iters))
    print(run_all([(model, args.sr, args.sr_weight) for model in args.models], starts, store, args.out,
                  "python " + " ".join(sys.argv), profile, args.percents, args.tune_percent))


if __name__ == "__main__":
    main()
