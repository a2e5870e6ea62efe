"""Train the course recipes from scratch and record time, images/s, VOC mAP@0.5 and COCO AP.

    python benchmarks/course_training.py                 # both course models, writes RESULTS.md
    python benchmarks/course_training.py --models plain  # one model

Each model's row is kept in benchmarks/course_training.json, so re-running one model keeps the
other's; the section between the course-training markers of benchmarks/RESULTS.md is rewritten.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from ssdlab.course import COURSE_MODELS, course_config
from ssdlab.engine import distributed as dist
from ssdlab.engine.precision import dtype_name, training_dtype
from ssdlab.engine.train import train

sys.path.insert(0, str(Path(__file__).resolve().parent))
from profiles import FULL, BenchProfile  # noqa: E402
from results_md import machine, write_section  # noqa: E402

HERE = Path(__file__).resolve().parent
START, END = "<!-- course-training:start -->", "<!-- course-training:end -->"


def run(model: str, out_root: Path, profile: BenchProfile = FULL) -> dict:
    """Train one course model from scratch; its numbers."""
    out = out_root / model
    shutil.rmtree(out, ignore_errors=True)
    cfg = course_config(model, profile.course, profile.overrides(out, profile.course_iters))
    result = train(cfg, resume=False)
    precision = dtype_name(training_dtype(cfg, dist.local_device(cfg.MODEL.DEVICE)))
    return {"model": model, "iterations": result.iteration, "train_seconds": result.train_seconds,
            "images_per_s": result.iteration * cfg.SOLVER.BATCH_SIZE / result.train_seconds,
            "precision": f"{cfg.SOLVER.PRECISION} ({precision})", "voc_map": result.metrics["voc_map"],
            "coco_ap": result.metrics["coco_ap"], "coco_ap50": result.metrics["coco"]["AP50"],
            "checkpoint": str(result.checkpoint)}


def table(rows: list[dict], n_val: int = FULL.n_val) -> str:
    """The RESULTS.md section."""
    lines = [START, "## Course recipes: training from scratch on the shapes dataset", "",
             f"Machine: {machine()}", "",
             "| model | iterations | precision | training time | images/s | VOC mAP@0.5 (area) | COCO AP | COCO AP50 | command |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['iterations']} | {r.get('precision', 'fp32')} | {r['train_seconds'] / 60:.1f} min | "
                     f"{r['images_per_s']:.0f} | {r['voc_map']:.4f} | {r['coco_ap']:.4f} | {r['coco_ap50']:.4f} | "
                     f"`{r['command']}` |")
    lines += ["", f"Training time excludes evaluation; images/s is iterations × batch over it. The val split is "
              f"{n_val} generated images. Precision: SOLVER.PRECISION and what it gave on this machine "
              "(`ssdlab.engine.precision`).", END]
    return "\n".join(lines)


def run_all(models: list[str], store: Path, results: Path, runs: Path, command: str,
            profile: BenchProfile = FULL) -> str:
    """Train each model, keep its row in the JSON store, rewrite the RESULTS.md section; the section."""
    profile.prepare_data()
    rows = json.loads(store.read_text()) if store.exists() else {}
    for model in models:
        rows[model] = {**run(model, runs, profile), "command": command}
        store.write_text(json.dumps(rows, indent=1) + "\n")
    section = table([rows[m] for m in COURSE_MODELS if m in rows], profile.n_val)
    write_section(section, results, START, END)
    return section


def main() -> None:
    """Parse arguments, run, write RESULTS.md."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(COURSE_MODELS), choices=COURSE_MODELS)
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument("--runs", type=Path, default=HERE / "runs")
    args = parser.parse_args()
    print(run_all(args.models, HERE / "course_training.json", args.out, args.runs, "python " + " ".join(sys.argv)))


if __name__ == "__main__":
    main()
