"""What one training sample costs, and training images/s with the loader in the process or in a worker.

    python benchmarks/data_pipeline.py                  # the plain course recipe: data_pipeline.jsonl, RESULTS.md
    python benchmarks/data_pipeline.py --only summary   # the section again from the committed records
    python benchmarks/data_pipeline.py --rounds 2 --steps 5 --samples 20 --data DIR --records R.jsonl --out R.md

1. Per sample, on one thread with the images already decoded (the loader's cache): the whole
   training sample, and its two parts, the augmentation (`dataset.transform`) and the
   per-prior targets (`dataset.target_transform`: matching and encoding); and the same
   augmentation in the seed's order, with the colour distortion first on the full image.
2. Training steps of the course model fed by two loaders of the same recipe, one reading in the
   training process (`DATA_LOADER.NUM_WORKERS 0`) and one with a worker process (`1`), in
   alternating blocks of `--steps` steps, so that a machine whose speed drifts affects both alike.

One JSON record per measurement (commit, machine, CPU flags, the recipe's config digest) goes to
benchmarks/data_pipeline.jsonl; the RESULTS.md section is generated from those records alone.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from ssdlab.config import CfgNode
from ssdlab.course import course_config
from ssdlab.data import transforms as T
from ssdlab.data.loader import SeededSamples, make_train_loader
from ssdlab.engine.profile import torch_threads
from ssdlab.engine.train import Trainer
from ssdlab.errors import ConfigError, SSDLabError

sys.path.insert(0, str(Path(__file__).resolve().parent))
from records import config_digest, context, data_profile, regenerate, write_records  # noqa: E402
from results_md import display  # noqa: E402

HERE = Path(__file__).resolve().parent
RECORDS = HERE / "data_pipeline.jsonl"
START, END = "<!-- data-pipeline:start -->", "<!-- data-pipeline:end -->"


def recipe(data: Path, workers: int) -> CfgNode:
    """The plain course recipe on data's train split, with a loader of `workers` worker processes."""
    return course_config("plain", "full", ["DATASETS.TRAIN", f"['{data}:train']", "DATASETS.TEST", "[]",
                                           "DATA_LOADER.NUM_WORKERS", str(workers),
                                           "OUTPUT_DIR", str(HERE / "runs" / "data_pipeline")])  # nothing written


def seed_order(pipeline: T.Compose) -> T.Compose:
    """The same steps in the seed's order: colour distortion first, on the image as decoded."""
    steps = pipeline.transforms
    colour = [t for t in steps if isinstance(t, T.PhotometricDistort)]
    return T.Compose([steps[0], *colour, *(t for t in steps[1:] if t not in colour)])


def per_sample_ms(dataset, samples: int) -> dict[str, float]:
    """Milliseconds per training sample and per part, on one thread, images decoded beforehand."""
    seeded = SeededSamples(dataset)
    for index in range(samples):
        dataset.get_image(index)  # fills the cache
    seed_pipeline = seed_order(dataset.transform)

    def augment(pipeline: T.Compose, index: int):
        """One image and its boxes through pipeline."""
        return pipeline(dataset.get_image(index).copy(), *dataset.get_annotation(index)[:2],
                        rng=np.random.default_rng(index))

    parts = {"sample": lambda i: seeded[(i, i)],
             "augmentation": lambda i: augment(dataset.transform, i),
             "augmentation in the seed's order (colour first, full image)": lambda i: augment(seed_pipeline, i),
             "targets": lambda i: dataset.target_transform(*dataset.get_annotation(i)[:2])}
    timings = {}
    with torch_threads(1):
        for name, work in parts.items():
            start = time.perf_counter()
            for index in range(samples):
                work(index)
            timings[name] = 1000 * (time.perf_counter() - start) / samples
    return timings


def loader_rates(trainer: Trainer, data: Path, rounds: int, steps: int) -> dict[int, float]:
    """Training images/s with 0 and 1 loader workers, in alternating blocks of steps of a set-up trainer."""
    trainer.model.train()
    loaders = {workers: iter(make_train_loader(recipe(data, workers), trainer.train_set, 1000 * workers))
               for workers in (0, 1)}
    seconds, images = {0: 0.0, 1: 0.0}, {0: 0, 1: 0}
    for _ in range(rounds):
        for workers, loader in loaders.items():
            start = time.perf_counter()
            for step in range(steps):
                batch, targets, _ = next(loader)
                trainer.step(batch, targets, step)
                images[workers] += batch.shape[0]
            seconds[workers] += time.perf_counter() - start
    return {workers: images[workers] / seconds[workers] for workers in loaders}


def section(records: list[dict]) -> str:
    """The RESULTS.md section, generated from the records alone."""
    first = records[0]
    samples = [r for r in records if r["unit"] == "ms"]
    loaders = {r["workers"]: r for r in records if r["unit"] == "images/s"}
    return "\n".join([
        START, "## Data pipeline: the cost of a training sample", "",
        f"Generated by `python benchmarks/data_pipeline.py --only summary` from the records of `{first['command']}` "
        f"({first['date']}, commit {first['commit']}, config digest {first['config_digest']}). Machine: "
        f"{first['machine']}; CPU flags: {first['cpu_flags']}.", "",
        "| per sample (one thread, images decoded) | ms |", "|---|---|",
        *(f"| {r['row']} | {r['value']:.2f} |" for r in samples), "",
        f"Training the plain course model, each loader for {first['rounds']} × {first['steps']} steps in alternating "
        "blocks:", "",
        "| loader | images/s |", "|---|---|",
        f"| in the training process (`NUM_WORKERS 0`, the course recipes) | {loaders[0]['value']:.1f} |",
        f"| one worker process (`NUM_WORKERS 1`) | {loaders[1]['value']:.1f} |", END])


def positive(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return int(text)


def measure(args: argparse.Namespace) -> list[dict]:
    """Both measurements of args (on one training set, read once): one record per timing and per loader."""
    cfg = recipe(args.data, 0)
    trainer = Trainer(cfg, resume=False, progress=False)
    trainer.setup()
    dataset = trainer.train_set
    if args.samples > len(dataset):
        raise ConfigError(f"--samples {args.samples}: {args.data} has only {len(dataset)} training images")
    timings = per_sample_ms(dataset, args.samples)
    rates = loader_rates(trainer, args.data, args.rounds, args.steps)
    shared = {**context("data_pipeline", data_profile(args.data)), "command": "python " + " ".join(sys.argv),
              "config_digest": config_digest(cfg.to_dict()), "data": display(args.data), "rounds": args.rounds,
              "steps": args.steps}
    return ([{**shared, "row": name, "unit": "ms", "value": ms, "samples": args.samples} for name, ms in timings.items()]
            + [{**shared, "row": f"NUM_WORKERS {w}", "unit": "images/s", "value": rate, "workers": w}
               for w, rate in rates.items()])


def main() -> None:
    """Parse arguments, measure, write RESULTS.md."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("datasets/shapes"),
                        help="a shapes folder (python -m ssdlab data shapes); default: %(default)s")
    parser.add_argument("--samples", type=positive, default=300, help="samples timed per part (default %(default)s)")
    parser.add_argument("--rounds", type=positive, default=8, help="blocks per loader (default %(default)s)")
    parser.add_argument("--steps", type=positive, default=25, help="training steps per block (default %(default)s)")
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS.md", help="the RESULTS.md to update")
    parser.add_argument("--records", type=Path, default=RECORDS, help="the JSON-lines records (default: %(default)s)")
    parser.add_argument("--only", choices=["summary"], help="regenerate the RESULTS.md section from the records")
    args = parser.parse_args()
    if args.only != "summary":
        try:
            write_records(measure(args), args.records)
        except SSDLabError as err:
            sys.exit(f"error: {err}")
    print(regenerate(section, args.records, args.out, (START, END), before=("\n<!-- course-training:start -->",)))


if __name__ == "__main__":
    main()
