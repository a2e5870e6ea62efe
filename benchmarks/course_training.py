"""Train the course recipes from scratch and record time, images/s, VOC mAP@0.5 and COCO AP.

    python benchmarks/course_training.py                 # both course models, writes RESULTS.md
    python benchmarks/course_training.py --models plain  # one model
    python benchmarks/course_training.py --only summary  # the section again from the records

Each model trains in the course's stage folder runs/<model>-<digest> (a finished run of the same
recipe is reused, with the training time it recorded: `reused` in its record). Each model's result
is one JSON record in benchmarks/course_training.jsonl (commit, machine, CPU flags, weights and
config digests), so re-running one model keeps the other's; the section between the
course-training markers of benchmarks/RESULTS.md is generated from those records alone.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ssdlab.course import COURSE_MODELS, course_config, train_recipe
from ssdlab.engine import distributed as dist
from ssdlab.engine.precision import dtype_name, training_dtype

sys.path.insert(0, str(Path(__file__).resolve().parent))
from profiles import FULL, BenchProfile, at_root  # noqa: E402
from records import checkpoint_fields, context, measured, read_records, regenerate, write_records  # noqa: E402

HERE = Path(__file__).resolve().parent
START, END = "<!-- course-training:start -->", "<!-- course-training:end -->"


def recipe(model: str, profile: BenchProfile = FULL):
    """A course model's recipe from scratch under the profile: the course's stage <model>-<digest>."""
    return course_config(model, profile.course, profile.overrides(profile.course_iters))


def run(model: str, command: str, profile: BenchProfile = FULL) -> dict:
    """Train one course model from scratch (or reuse its finished stage, with the time it took); its record."""
    cfg = recipe(model, profile)
    result = train_recipe(cfg)
    precision = dtype_name(training_dtype(cfg, dist.local_device(cfg.MODEL.DEVICE)))
    return {**context("course", profile.course), "model": model, "command": command, "reused": result.reused,
            **checkpoint_fields(result.checkpoint), "iterations": result.iteration, "train_seconds": result.train_seconds,
            "images_per_s": result.iteration * cfg.SOLVER.BATCH_SIZE / result.train_seconds,
            "precision": f"{cfg.SOLVER.PRECISION} ({precision})", "voc_map": result.metrics["voc_map"],
            "coco_ap": result.metrics["coco_ap"], "coco_ap50": result.metrics["coco"]["AP50"]}


def table(rows: list[dict], n_val: int = FULL.n_val) -> str:
    """The RESULTS.md section, generated from the records alone."""
    lines = [START, "## Course recipes: training from scratch on the shapes dataset", "",
             "Generated from `benchmarks/course_training.jsonl`. Measured: "
             + measured(rows) + ".", "",
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


def run_all(models: list[str], store: Path, results: Path, command: str, profile: BenchProfile = FULL) -> str:
    """Train each model, replace its record in the store, rewrite the RESULTS.md section; the section."""
    profile.prepare_data()
    rows = {r["model"]: r for r in read_records(store)}
    for model in models:
        rows[model] = run(model, command, profile)
        write_records([rows[m] for m in COURSE_MODELS if m in rows], store)
    return regenerate(lambda records: section(records, profile.n_val), store, results, (START, END))


def section(records: list[dict], n_val: int = FULL.n_val) -> str:
    """The RESULTS.md section of the stored records, in the order of the course models."""
    rows = {r["model"]: r for r in records}
    return table([rows[m] for m in COURSE_MODELS if m in rows], n_val)


def main() -> None:
    """Parse arguments, run, write RESULTS.md."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(COURSE_MODELS), choices=COURSE_MODELS)
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument("--only", choices=["summary"], help="regenerate the RESULTS.md section from the records")
    args = parser.parse_args()
    store = HERE / "course_training.jsonl"
    command = "python " + " ".join(sys.argv)
    if args.only:
        print(regenerate(section, store, args.out, (START, END)))
        return
    print(run_all(args.models, store, args.out, command, at_root(FULL)))


if __name__ == "__main__":
    main()
