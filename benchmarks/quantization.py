"""Quantization-aware training of the plain course model: every quantizer, and pruned + quantized.

    python benchmarks/quantization.py                      # all rows, writes RESULTS.md
    python benchmarks/quantization.py --rows iao-w8a8 dorefa-w8a8 --iters 500

Each row continues the committed float baseline (ssdlab/checkpoints/plain_shapes.pt) with the
QAT recipe course/plain_quant.yaml and the row's QUANTIZATION settings; `pruned-iao-w8a8`
starts from a pruned checkpoint instead (--pruned, e.g. one written by benchmarks/pruning.py:
prune-then-quantize). Rows are kept in benchmarks/quantization.json; the section between the
quantization markers of benchmarks/RESULTS.md is rewritten.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from ssdlab.config import PACKAGE_CONFIGS, load_config
from ssdlab.course import PROFILES, baseline
from ssdlab.data.shapes import generate_shapes
from ssdlab.engine import checkpoint as ckpt
from ssdlab.engine.inference import evaluate_model
from ssdlab.engine.profile import count_params, measure_latency, size_mib
from ssdlab.engine.train import datasets, train

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_md import machine, write_section  # noqa: E402

HERE = Path(__file__).resolve().parent
START, END = "<!-- quantization:start -->", "<!-- quantization:end -->"
ROWS = {  # name -> (TYPE, WBITS, ABITS)
    "iao-w8a8": ("IAO", 8, 8), "dorefa-w8a8": ("dorefa", 8, 8), "iao-w4a4": ("IAO", 4, 4),
    "dorefa-w4a4": ("dorefa", 4, 4), "bwn-binary": ("BWN", 2, 32), "bwn-ternary": ("BWN", 3, 32),
    "bwn-binary-a2": ("BWN", 2, 2), "pruned-iao-w8a8": ("IAO", 8, 8),
}


def recipe(start: Path, kind: str, wbits: int, abits: int, iters: int, out: Path):
    """The QAT recipe for one row."""
    data = PROFILES["full"]["data"]
    return load_config(PACKAGE_CONFIGS / "course" / "plain_quant.yaml",
                       ["MODEL.WEIGHTS", str(start), "QUANTIZATION.TYPE", kind, "QUANTIZATION.WBITS", str(wbits),
                        "QUANTIZATION.ABITS", str(abits), "SOLVER.MAX_ITER", str(iters),
                        "QUANTIZATION.FREEZE_BN_ITER", str(int(iters * 0.8)),
                        "QUANTIZATION.FREEZE_OBSERVER_ITER", str(int(iters * 0.9)),
                        "DATASETS.TRAIN", f"['{data}:train']", "DATASETS.TEST", f"['{data}:val']",
                        "OUTPUT_DIR", str(out)])


def measure(model, cfg) -> dict:
    """Params, bit-width-aware size, latency and metrics of a model."""
    result = evaluate_model(model, datasets(cfg, False), cfg)
    return {"params": count_params(model), "size_mib": size_mib(model), "voc_map": result["voc_map"],
            "coco_ap": result["coco_ap"], "ms": measure_latency(model, cfg.INPUT.IMAGE_SIZE, runs=10)["median_ms"]}


def run_row(name: str, pruned: Path | None, iters: int, runs: Path) -> dict:
    """QAT for one row; its numbers."""
    kind, wbits, abits = ROWS[name]
    start = pruned if name.startswith("pruned") else baseline("plain")
    cfg = recipe(start, kind, wbits, abits, iters, runs / f"quant_{name}")
    result = train(cfg, resume=False)
    return {"row": name, "type": kind, "wbits": wbits, "abits": abits, "iterations": iters,
            "start": str(start), "minutes": result.train_seconds / 60, **measure(ckpt.load(result.checkpoint), cfg)}


def table(rows: list[dict], float_row: dict, command: str) -> str:
    """The RESULTS.md section."""
    lines = [START, "## Quantization-aware training of the plain course model", "",
             f"Machine: {machine()}; latency: batch 1, {torch.get_num_threads()} threads, fake quantization "
             "in PyTorch (so not faster than float).", f"Command: `{command}`", "",
             "| model | W/A bits | params | size (MiB) | smaller than float | VOC mAP@0.5 | vs float | COCO AP | QAT time |",
             "|---|---|---|---|---|---|---|---|---|",
             f"| float baseline | 32/32 | {float_row['params']:,} | {float_row['size_mib']:.2f} | - | "
             f"{float_row['voc_map']:.4f} | - | {float_row['coco_ap']:.4f} | - |"]
    for r in rows:
        lines.append(f"| {r['row']} | {r['wbits']}/{r['abits']} | {r['params']:,} | {r['size_mib']:.2f} | "
                     f"{1 - r['size_mib'] / float_row['size_mib']:.1%} | {r['voc_map']:.4f} | "
                     f"{r['voc_map'] - float_row['voc_map']:+.4f} | {r['coco_ap']:.4f} | {r['minutes']:.1f} min |")
    lines += ["", "BWN WBITS 2 = binary (1 bit per weight), 3 = ternary (2 bits); float layers (the first conv "
              "and the heads unless QUANTIZATION.FINAL) count 32 bits.", END]
    return "\n".join(lines)


def main() -> None:
    """Parse arguments, run, write RESULTS.md."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="+", default=[r for r in ROWS if r != "pruned-iao-w8a8"], choices=list(ROWS))
    parser.add_argument("--pruned", type=Path, help="pruned checkpoint for the pruned-* rows")
    parser.add_argument("--iters", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument("--runs", type=Path, default=HERE / "runs")
    args = parser.parse_args()
    if any(r.startswith("pruned") for r in args.rows) and args.pruned is None:
        parser.error("the pruned-* rows need --pruned CHECKPOINT")
    settings = PROFILES["full"]
    generate_shapes(Path(settings["data"]), n_train=settings["train"], n_val=settings["val"])
    store = HERE / "quantization.json"
    rows = json.loads(store.read_text()) if store.exists() else {}
    float_cfg = recipe(baseline("plain"), "no", 32, 32, args.iters, args.runs / "unused")
    rows["float"] = measure(ckpt.load(baseline("plain")), float_cfg)
    for name in args.rows:
        rows[name] = run_row(name, args.pruned, args.iters, args.runs)
        store.write_text(json.dumps(rows, indent=1) + "\n")
    section = table([rows[n] for n in ROWS if n in rows], rows["float"], "python " + " ".join(sys.argv))
    write_section(section, args.out, START, END)
    print(section)


if __name__ == "__main__":
    main()
