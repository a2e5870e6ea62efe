"""Quantization-aware training of the plain course model: every quantizer, and pruned + quantized in both orders.

    python benchmarks/quantization.py                      # all QAT rows, writes RESULTS.md
    python benchmarks/quantization.py --rows iao-w8a8 dorefa-w8a8 --iters 500
    python benchmarks/quantization.py --rows pruned-iao-w8a8 --pruned benchmarks/runs/pruned/plain_sparse/P.pt
    python benchmarks/quantization.py --rows iao-w8a8-pruned --sparse benchmarks/runs/plain_sparse/model_final.pt

Each row continues the committed float baseline (ssdlab/checkpoints/plain_shapes.pt) with the
QAT recipe course/plain_quant.yaml and the row's QUANTIZATION settings. `pruned-iao-w8a8`
starts from a pruned checkpoint instead (--pruned, e.g. one written by benchmarks/pruning.py:
prune-then-quantize); `iao-w8a8-pruned` continues a sparse model (--sparse) with IAO QAT that
keeps the L1 penalty on BN γ, then prunes the quantized model at --percent (quantize-then-prune).
Rows are kept in benchmarks/quantization.json; the section between the quantization markers of
benchmarks/RESULTS.md is rewritten.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from ssdlab.config import CfgNode
from ssdlab.course import baseline, quant_config
from ssdlab.engine import checkpoint as ckpt
from ssdlab.engine.inference import evaluate_model
from ssdlab.engine.profile import count_params, measure_latency, size_mib
from ssdlab.engine.train import datasets, train
from ssdlab.prune.report import prune_checkpoint
from ssdlab.prune.surgery import make_plan

sys.path.insert(0, str(Path(__file__).resolve().parent))
from profiles import FULL, BenchProfile  # noqa: E402
from results_md import machine, write_section  # noqa: E402

HERE = Path(__file__).resolve().parent
START, END = "<!-- quantization:start -->", "<!-- quantization:end -->"
ROWS = {  # name -> (TYPE, WBITS, ABITS)
    "iao-w8a8": ("IAO", 8, 8), "dorefa-w8a8": ("dorefa", 8, 8), "iao-w4a4": ("IAO", 4, 4),
    "dorefa-w4a4": ("dorefa", 4, 4), "bwn-binary": ("BWN", 2, 32), "bwn-ternary": ("BWN", 3, 32),
    "bwn-binary-a2": ("BWN", 2, 2), "pruned-iao-w8a8": ("IAO", 8, 8), "iao-w8a8-pruned": ("IAO", 8, 8),
}
QAT_ROWS = ["iao-w8a8", "dorefa-w8a8", "iao-w4a4", "dorefa-w4a4", "bwn-binary", "bwn-ternary"]
COMBINED_ROWS = ["pruned-iao-w8a8", "iao-w8a8-pruned"]


def recipe(start: Path, kind: str, wbits: int, abits: int, iters: int, out: Path, profile: BenchProfile = FULL,
           extra: list[str] | None = None) -> CfgNode:
    """The QAT recipe for one row."""
    return quant_config(kind, wbits, abits, iters, profile.course, start, [*profile.overrides(out), *(extra or [])])


def measure(model, cfg: CfgNode, metrics: dict | None = None, runs: int = 10) -> dict:
    """Params, bit-width-aware size, latency and metrics of a model (evaluated unless metrics are given)."""
    metrics = metrics or evaluate_model(model, datasets(cfg, False), cfg)
    return {"params": count_params(model), "size_mib": size_mib(model), "voc_map": metrics["voc_map"],
            "coco_ap": metrics["coco_ap"], "ms": measure_latency(model, cfg.INPUT.IMAGE_SIZE, runs=runs)["median_ms"]}


def qat_row(name: str, start: Path, iters: int, runs: Path, profile: BenchProfile = FULL) -> dict:
    """QAT of one row from `start`; its numbers."""
    kind, wbits, abits = ROWS[name]
    cfg = recipe(start, kind, wbits, abits, iters, runs / f"quant_{name}", profile)
    result = train(cfg, resume=False)
    return {"row": name, "type": kind, "wbits": wbits, "abits": abits, "iterations": iters,
            "start": str(start), "minutes": result.train_seconds / 60, "checkpoint": str(result.checkpoint),
            **measure(ckpt.load(result.checkpoint), cfg, result.metrics, profile.latency_runs)}


def quantize_then_prune(sparse: Path, percent: float, iters: int, runs: Path, profile: BenchProfile = FULL) -> dict:
    """Sparse IAO W8A8 QAT from a sparse float model, then prune the quantized model (no fine-tune)."""
    name = "iao-w8a8-pruned"
    cfg = recipe(sparse, "IAO", 8, 8, iters, runs / f"quant_{name}", profile,
                 ["PRUNE.TYPE", "normal", "PRUNE.SR", "0.005"])
    result = train(cfg, resume=False)
    safe = make_plan(ckpt.load(result.checkpoint), 0.0, "normal").highest_safe
    report = prune_checkpoint(result.checkpoint, cfg, percent, "normal", drop_levels=percent > safe, quick=True,
                              dataset=datasets(cfg, False))
    compact = report.rows[-1]
    return {"row": name, "type": "IAO", "wbits": 8, "abits": 8, "iterations": iters, "start": str(sparse),
            "percent": percent, "max": percent > safe, "minutes": result.train_seconds / 60,
            "checkpoint": str(report.files["checkpoint"]), "qat_checkpoint": str(result.checkpoint),
            "qat_voc_map": result.metrics["voc_map"],
            **measure(report.model, cfg, {k: compact[k] for k in ("voc_map", "coco_ap")}, profile.latency_runs)}


def run_row(name: str, start: Path | None, iters: int, runs: Path, profile: BenchProfile = FULL,
            percent: float = 0.6) -> dict:
    """One row: QAT from the float baseline, from a pruned model (pruned-*) or quantize-then-prune (*-pruned)."""
    if name.endswith("-pruned"):
        return quantize_then_prune(start, percent, iters, runs, profile)
    return qat_row(name, start if name.startswith("pruned") else baseline("plain"), iters, runs, profile)


def table(rows: list[dict], float_row: dict, command: str) -> str:
    """The RESULTS.md section."""
    lines = [START, "## Quantization-aware training of the plain course model", "",
             f"Machine: {machine()}; latency: batch 1, {torch.get_num_threads()} threads, fake quantization "
             "in PyTorch (so not faster than float).",
             "Commands: " + "; ".join(f"`{c}`" for c in dict.fromkeys(r.get("command", command) for r in rows)), "",
             "| model | W/A bits | params | size (MiB) | smaller than float | VOC mAP@0.5 | vs float | COCO AP | "
             "QAT time |",
             "|---|---|---|---|---|---|---|---|---|",
             f"| float baseline | 32/32 | {float_row['params']:,} | {float_row['size_mib']:.2f} | - | "
             f"{float_row['voc_map']:.4f} | - | {float_row['coco_ap']:.4f} | - |"]
    for r in rows:
        lines.append(f"| {r['row']} | {r['wbits']}/{r['abits']} | {r['params']:,} | {r['size_mib']:.2f} | "
                     f"{1 - r['size_mib'] / float_row['size_mib']:.1%} | {r['voc_map']:.4f} | "
                     f"{r['voc_map'] - float_row['voc_map']:+.4f} | {r['coco_ap']:.4f} | {r['minutes']:.1f} min |")
    lines += ["", "BWN WBITS 2 = binary (1 bit per weight), 3 = ternary (2 bits); float layers (the first conv "
              "and the heads unless QUANTIZATION.FINAL) count 32 bits."]
    if any(r["row"] in COMBINED_ROWS for r in rows):
        lines.append("`pruned-iao-w8a8`: IAO QAT of the pruned model (prune, then quantize); `iao-w8a8-pruned`: "
                     "IAO QAT of the sparse model keeping the L1 penalty, then pruned without fine-tune "
                     "(quantize, then prune).")
    lines.append(END)
    return "\n".join(lines)


def run_all(names: list[str], store: Path, results: Path, runs: Path, command: str, profile: BenchProfile = FULL,
            iters: int | None = None, starts: dict[str, Path] | None = None, percent: float = 0.6) -> str:
    """Run each row (starts: the checkpoint of pruned-* and *-pruned rows), keep it in the JSON store,
    rewrite the RESULTS.md section and return it."""
    profile.prepare_data()
    iters = iters or profile.qat_iters
    rows = json.loads(store.read_text()) if store.exists() else {}
    float_cfg = recipe(baseline("plain"), "no", 32, 32, iters, runs / "unused", profile)
    rows["float"] = measure(ckpt.load(baseline("plain")), float_cfg, runs=profile.latency_runs)
    for name in names:
        rows[name] = {**run_row(name, (starts or {}).get(name), iters, runs, profile, percent), "command": command}
        store.write_text(json.dumps(rows, indent=1) + "\n")
    store.write_text(json.dumps(rows, indent=1) + "\n")
    section = table([rows[n] for n in ROWS if n in rows], rows["float"], command)
    write_section(section, results, START, END)
    return section


def main() -> None:
    """Parse arguments, run, write RESULTS.md."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="+", default=QAT_ROWS, choices=list(ROWS))
    parser.add_argument("--pruned", type=Path, help="pruned checkpoint for the pruned-* rows")
    parser.add_argument("--sparse", type=Path, help="sparse float checkpoint for the *-pruned rows")
    parser.add_argument("--percent", type=float, default=0.6, help="prune percent of the *-pruned rows")
    parser.add_argument("--iters", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument("--runs", type=Path, default=HERE / "runs")
    args = parser.parse_args()
    if any(r.startswith("pruned") for r in args.rows) and args.pruned is None:
        parser.error("the pruned-* rows need --pruned CHECKPOINT")
    if any(r.endswith("-pruned") for r in args.rows) and args.sparse is None:
        parser.error("the *-pruned rows need --sparse CHECKPOINT")
    starts = {name: args.pruned if name.startswith("pruned") else args.sparse for name in COMBINED_ROWS}
    print(run_all(args.rows, HERE / "quantization.json", args.out, args.runs, "python " + " ".join(sys.argv),
                  iters=args.iters, starts=starts, percent=args.percent))


if __name__ == "__main__":
    main()
