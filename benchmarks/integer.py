"""The integer-only reference against the fake-quantized model, for IAO checkpoints.

    python benchmarks/integer.py --ckpt benchmarks/runs/plain_quant_iao-w8a8/model_final.pt \
        benchmarks/runs/plain_quant_pruned-iao-w8a8-final/model_final.pt

For each checkpoint: mAP of the fake-quantized PyTorch model and of the NumPy integer pipeline
(ssdlab.export.intref) on the shapes val split, how many of their detections agree (same label,
box IoU >= 0.99), the share of MACs computed in integer, and the reference's time per image.
Kept in benchmarks/integer.json; the section between the integer markers of RESULTS.md is
rewritten.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ssdlab.course import PROFILES
from ssdlab.data.catalog import datasets
from ssdlab.engine import checkpoint as ckpt
from ssdlab.export.intref import compare_integer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_md import display, machine, write_section  # noqa: E402

HERE = Path(__file__).resolve().parent
START, END = "<!-- integer:start -->", "<!-- integer:end -->"


def row(path: Path, data: Path) -> dict:
    """The comparison for one IAO checkpoint on the val split of a shapes folder."""
    model = ckpt.load(path).eval()
    cfg = model.cfg.clone()
    cfg.DATASETS.TEST = [f"{data}:val"]
    cfg.freeze()
    val = datasets(cfg, is_train=False)
    began = time.perf_counter()
    result = compare_integer(model, val, cfg)
    spec = model.quant_spec
    return {"checkpoint": display(path), "quantization": f"{spec.kind} W{spec.wbits}A{spec.abits}",
            "heads_quantized": bool(cfg.QUANTIZATION.FINAL), "images": len(val),
            "fake_map": result["fake_quant"]["voc_map"], "integer_map": result["integer"]["voc_map"],
            "fake_coco": result["fake_quant"]["coco_ap"], "integer_coco": result["integer"]["coco_ap"],
            **{f"agree_{k}": v for k, v in result["agreement"].items()},
            "integer_share": result["integer_share"], "seconds": time.perf_counter() - began}


def table(rows: list[dict], command: str) -> str:
    """The RESULTS.md section."""
    lines = [START, "## Integer-only reference inference (IAO models)", "",
             f"Machine: {machine()}. `ssdlab.export.intref`: int8 × int8 → int32 accumulators, int32 biases, "
             "fixed-point requantization per output channel, in NumPy; compared with the fake-quantized PyTorch "
             "model on the shapes val split. Agreement: detections with the same label and box IoU ≥ 0.99 "
             "(one-to-one), out of the larger detection list of each image.", f"Command: `{command}`", "",
             "| checkpoint | quantization | heads quantized | fake-quant VOC mAP@0.5 | integer VOC mAP@0.5 | "
             "COCO AP fake / integer | agreement | MACs in integer |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| `{r['checkpoint']}` | {r['quantization']} | {'yes' if r['heads_quantized'] else 'no'} | "
                     f"{r['fake_map']:.4f} | {r['integer_map']:.4f} | {r['fake_coco']:.4f} / {r['integer_coco']:.4f} | "
                     f"{r['agree_agreed']:,} of {r['agree_total']:,} ({100 * r['agree_fraction']:.2f}%) | "
                     f"{100 * r['integer_share']:.1f}% |")
    lines += ["", "The layers left in float (the input layer; the heads when QUANTIZATION.FINAL is off) run in "
              "float32 in the reference too, as in the fake-quantized model.", END]
    return "\n".join(lines)


def main() -> None:
    """Compare every --ckpt and rewrite the section."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", type=Path, nargs="+", required=True, help="IAO QAT checkpoints")
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument("--data", type=Path, default=Path(PROFILES["full"]["data"]), help="shapes folder (its val split)")
    args = parser.parse_args()
    rows = [row(path, args.data) for path in args.ckpt]
    (args.out.parent / "integer.json").write_text(json.dumps(rows, indent=1))  # beside the RESULTS.md it writes
    command = "python benchmarks/integer.py --ckpt " + " ".join(display(p) for p in args.ckpt)
    write_section(table(rows, command), args.out, START, END)
    print(table(rows, command))


if __name__ == "__main__":
    main()
