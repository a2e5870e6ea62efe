"""Quantization-aware training of the course models: every quantizer, and pruned + quantized in both orders.

    python benchmarks/quantization.py                      # all QAT rows of the plain model, writes RESULTS.md
    python benchmarks/quantization.py --model residual --rows iao-w8a8 dorefa-w8a8 --iters 500
    python benchmarks/quantization.py --rows pruned-iao-w8a8 --pruned runs/plain_sparse-<digest>/model_final_normal_p0.6.pt
    python benchmarks/quantization.py --rows iao-w8a8-pruned --sparse runs/plain_sparse-<digest>/model_final.pt

Each row continues the model's committed float baseline (ssdlab/checkpoints/<model>_shapes.pt)
with its QAT recipe course/<model>_quant.yaml and the row's QUANTIZATION settings, in its course
stage folder runs/<model>_quant_<kind>_w<bits>a<bits>-<digest> (ssdlab.course: a finished run of the
same request, e.g. notebook 05's, is reused).
`pruned-iao-w8a8` starts from a pruned checkpoint instead (--pruned, e.g. one written by
benchmarks/pruning.py: prune-then-quantize); `iao-w8a8-pruned` continues a sparse model
(--sparse) with IAO QAT that keeps the L1 penalty of the model's sparse recipe on BN γ, then
prunes the quantized model at --percent (quantize-then-prune). One JSON record per row and model
(commit, machine, CPU flags, weights and config digests) in benchmarks/quantization.jsonl; a new run
replaces the records of its rows, and the section between the quantization markers of
benchmarks/RESULTS.md is generated from the records alone, a table per model.

    python benchmarks/quantization.py --only summary       # the section again from the records
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ssdlab.config import CfgNode
from ssdlab.course import (COURSE_MODELS, baseline, prune_stage, quant_after, quant_config, sparse_config,
                           train_recipe)
from ssdlab.data.catalog import datasets
from ssdlab.engine import checkpoint as ckpt
from ssdlab.engine.inference import evaluate_model
from ssdlab.engine.profile import count_params, measure_latency, size_mib
from ssdlab.prune.surgery import make_plan

sys.path.insert(0, str(Path(__file__).resolve().parent))
from profiles import FULL, BenchProfile, at_root  # noqa: E402
from records import checkpoint_fields, context, measured, read_records, regenerate, write_records  # noqa: E402
from results_md import ROOT, display  # noqa: E402

HERE = Path(__file__).resolve().parent
START, END = "<!-- quantization:start -->", "<!-- quantization:end -->"
ROWS = {  # name -> (TYPE, WBITS, ABITS)
    "iao-w8a8": ("IAO", 8, 8), "dorefa-w8a8": ("dorefa", 8, 8), "iao-w4a4": ("IAO", 4, 4),
    "dorefa-w4a4": ("dorefa", 4, 4), "bwn-binary": ("BWN", 2, 32), "bwn-ternary": ("BWN", 3, 32),
    "bwn-binary-a2": ("BWN", 2, 2), "pruned-iao-w8a8": ("IAO", 8, 8), "iao-w8a8-pruned": ("IAO", 8, 8),
}
QAT_ROWS = ["iao-w8a8", "dorefa-w8a8", "iao-w4a4", "dorefa-w4a4", "bwn-binary", "bwn-ternary"]
COMBINED_ROWS = ["pruned-iao-w8a8", "iao-w8a8-pruned"]


def recipe(model: str, start: Path, kind: str, wbits: int, abits: int, iters: int, profile: BenchProfile = FULL,
           extra: list[str] | None = None, stage: str | None = None) -> CfgNode:
    """The QAT recipe of one row of a course model, in its course stage (default <model>_quant_<kind>_w<b>a<b>:
    notebook 05's run when the row and its start are the course's)."""
    return quant_config(kind, wbits, abits, iters, profile.course, start, [*profile.overrides(), *(extra or [])],
                        model, stage)


def row_recipe(model: str, name: str, start: Path, iters: int, profile: BenchProfile = FULL) -> CfgNode:
    """The recipe of a QAT row from `start` (pruned-iao-w8a8 runs in the stage quant_after(model, "pruned"), as the
    tour and notebook 06 do)."""
    kind, wbits, abits = ROWS[name]
    stage = quant_after(model, "pruned") if name == "pruned-iao-w8a8" else None
    return recipe(model, start, kind, wbits, abits, iters, profile, stage=stage)


def measure(model, cfg: CfgNode, metrics: dict | None = None, runs: int = 10) -> dict:
    """Params, bit-width-aware size, latency and metrics of a model (evaluated unless metrics are given)."""
    metrics = metrics or evaluate_model(model, datasets(cfg, False), cfg)
    return {"params": count_params(model), "size_mib": size_mib(model), "voc_map": metrics["voc_map"],
            "coco_ap": metrics["coco_ap"], "ms": measure_latency(model, cfg.INPUT.IMAGE_SIZE, runs=runs)["median_ms"],
            "threads": torch.get_num_threads()}


def qat_row(model: str, name: str, start: Path, iters: int, profile: BenchProfile = FULL) -> dict:
    """QAT of one row from `start` (reused when its stage has finished); its numbers."""
    kind, wbits, abits = ROWS[name]
    cfg = row_recipe(model, name, start, iters, profile)
    result = train_recipe(cfg)
    return {"row": name, "type": kind, "wbits": wbits, "abits": abits, "iterations": iters, "reused": result.reused,
            "start": display(start), "minutes": result.train_seconds / 60, "checkpoint": display(result.checkpoint),
            **measure(ckpt.load(result.checkpoint), cfg, result.metrics, profile.latency_runs)}


def quantize_then_prune(model: str, sparse: Path, percent: float, iters: int, profile: BenchProfile = FULL) -> dict:
    """Sparse IAO W8A8 QAT from a sparse float model (the sparse recipe's PRUNE.TYPE and SR, stage
    <model>_sparse_quant_iao_w8a8), then prune the quantized model beside it (no fine-tune)."""
    name = "iao-w8a8-pruned"
    sparse_recipe = sparse_config(model, profile.course).PRUNE
    mode = sparse_recipe.TYPE
    cfg = recipe(model, sparse, "IAO", 8, 8, iters, profile, ["PRUNE.TYPE", mode, "PRUNE.SR", str(sparse_recipe.SR)],
                 stage=quant_after(model, "sparse"))
    result = train_recipe(cfg)
    safe = make_plan(ckpt.load(result.checkpoint), 0.0, mode).highest_safe
    report = prune_stage(result.checkpoint, cfg, percent, mode, datasets(cfg, False), quick=True,
                         drop_levels=percent > safe)
    compact = report.rows[-1]
    return {"row": name, "type": "IAO", "wbits": 8, "abits": 8, "iterations": iters, "start": display(sparse),
            "prune_type": mode, "percent": percent, "max": percent > safe, "minutes": result.train_seconds / 60,
            "reused": result.reused, "checkpoint": display(report.files["checkpoint"]),
            "qat_checkpoint": display(result.checkpoint), "qat_voc_map": result.metrics["voc_map"],
            **measure(report.model, cfg, {k: compact[k] for k in ("voc_map", "coco_ap")}, profile.latency_runs)}


def run_row(model: str, name: str, start: Path | None, iters: int, profile: BenchProfile = FULL,
            percent: float = 0.6) -> dict:
    """One row: QAT from the float baseline, from a pruned model (pruned-*) or quantize-then-prune (*-pruned)."""
    if name.endswith("-pruned"):
        assert start is not None, "the *-pruned rows start from a sparse model"
        return quantize_then_prune(model, start, percent, iters, profile)
    return qat_row(model, name, start if start is not None and name.startswith("pruned") else baseline(model), iters,
                   profile)


def by_model(records: list[dict]) -> dict[str, dict[str, dict]]:
    """The records as {course model: {row name: record}} (the float baseline under 'float')."""
    return {m: {r["row"]: r for r in records if r["model"] == m} for m in COURSE_MODELS
            if any(r["model"] == m for r in records)}


def section(records: list[dict]) -> str:
    """The RESULTS.md section, generated from the records alone: a table per course model."""
    results, rows = by_model(records), [r for r in records if r["row"] in ROWS]
    threads = ", ".join(sorted({str(r["threads"]) for r in records}))
    lines = [START, "## Quantization-aware training of the course models", "",
             "Generated from `benchmarks/quantization.jsonl`. Measured: "
             + measured(records) + f"; latency: batch 1, {threads} threads, "
             "fake quantization in PyTorch (so not faster than float).",
             "Commands: " + "; ".join(f"`{c}`" for c in dict.fromkeys(r["command"] for r in rows))]
    for model, stored in results.items():
        lines += ["", f"### {model}", "", *table([stored[n] for n in ROWS if n in stored], stored["float"])]
    lines += ["", "BWN WBITS 2 = binary (1 bit per weight), 3 = ternary (2 bits); float layers (the first conv "
              "and the heads unless QUANTIZATION.FINAL) count 32 bits."]
    if any(r["row"] in COMBINED_ROWS for r in rows):
        lines.append("`pruned-iao-w8a8`: IAO QAT of the pruned model (prune, then quantize); `iao-w8a8-pruned`: "
                     "IAO QAT of the sparse model keeping the L1 penalty, then pruned without fine-tune "
                     "(quantize, then prune).")
    lines.append(END)
    return "\n".join(lines)


def table(rows: list[dict], float_row: dict) -> list[str]:
    """One model's rows against its float baseline."""
    lines = ["| model | W/A bits | params | size (MiB) | smaller than float | VOC mAP@0.5 | vs float | COCO AP | "
             "QAT time |",
             "|---|---|---|---|---|---|---|---|---|",
             f"| float baseline | 32/32 | {float_row['params']:,} | {float_row['size_mib']:.2f} | - | "
             f"{float_row['voc_map']:.4f} | - | {float_row['coco_ap']:.4f} | - |"]
    for r in rows:
        lines.append(f"| {r['row']} | {r['wbits']}/{r['abits']} | {r['params']:,} | {r['size_mib']:.2f} | "
                     f"{1 - r['size_mib'] / float_row['size_mib']:.1%} | {r['voc_map']:.4f} | "
                     f"{r['voc_map'] - float_row['voc_map']:+.4f} | {r['coco_ap']:.4f} | {r['minutes']:.1f} min |")
    return lines


def run_all(model: str, names: list[str], store: Path, results: Path, command: str, profile: BenchProfile = FULL,
            iters: int | None = None, starts: dict[str, Path] | None = None, percent: float = 0.6) -> str:
    """Run each row of a course model (starts: the checkpoint of pruned-* and *-pruned rows), replace its record
    in the store, rewrite the RESULTS.md section and return it."""
    profile.prepare_data()
    iters = iters or profile.qat_iters
    shared = {**context("quantization", profile.course), "model": model, "command": command}
    float_cfg = recipe(model, baseline(model), "no", 32, 32, iters, profile)  # for its test set only
    kept = [{**shared, "row": "float", **checkpoint_fields(baseline(model)),
             **measure(ckpt.load(baseline(model)), float_cfg, runs=profile.latency_runs)}]
    for name in names:
        row = run_row(model, name, (starts or {}).get(name), iters, profile, percent)
        kept.append({**shared, **row, **checkpoint_fields(ROOT / row["checkpoint"])})
        replaced = {(r["model"], r["row"]) for r in kept}
        write_records([r for r in read_records(store) if (r["model"], r["row"]) not in replaced] + kept, store)
    return regenerate(section, store, results, (START, END))


def main() -> None:
    """Parse arguments, run, write RESULTS.md."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="plain", choices=COURSE_MODELS, help="the course model")
    parser.add_argument("--rows", nargs="+", default=QAT_ROWS, choices=list(ROWS))
    parser.add_argument("--pruned", type=Path, help="pruned checkpoint for the pruned-* rows")
    parser.add_argument("--sparse", type=Path, help="sparse float checkpoint for the *-pruned rows")
    parser.add_argument("--percent", type=float, default=0.6, help="prune percent of the *-pruned rows")
    parser.add_argument("--iters", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument("--only", choices=["summary"], help="regenerate the RESULTS.md section from the records")
    args = parser.parse_args()
    store = HERE / "quantization.jsonl"
    if args.only:
        print(regenerate(section, store, args.out, (START, END)))
        return
    if any(r.startswith("pruned") for r in args.rows) and args.pruned is None:
        parser.error("the pruned-* rows need --pruned CHECKPOINT")
    if any(r.endswith("-pruned") for r in args.rows) and args.sparse is None:
        parser.error("the *-pruned rows need --sparse CHECKPOINT")
    starts = {name: (args.pruned if name.startswith("pruned") else args.sparse) for name in COMBINED_ROWS}
    starts = {name: path.resolve() for name, path in starts.items() if path is not None}
    print(run_all(args.model, args.rows, store, args.out, "python " + " ".join(sys.argv), at_root(FULL),
                  iters=args.iters, starts=starts, percent=args.percent))


if __name__ == "__main__":
    main()
