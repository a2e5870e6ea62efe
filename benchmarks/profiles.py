"""Benchmark profiles: how much data, how many iterations and how many timed runs each script uses.

`full` is what benchmarks/RESULTS.md reports (the course recipes as they are, on the course's data, so its
runs are the course's stages in runs/: a benchmark and a notebook asking for the same run share it); `smoke`
runs every row on tiny settings so that `make test` keeps the scripts working (its numbers mean nothing).
Paths are relative to the working folder, which `at_root` makes the repository for the full profile.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from ssdlab.course import PROFILES
from ssdlab.data.shapes import generate_shapes

from results_md import ROOT


@dataclass(frozen=True)
class BenchProfile:
    """Settings of one benchmark profile (`course` names the ssdlab.course profile the recipes use)."""

    course: str
    data: Path
    n_train: int
    n_val: int
    course_iters: int | None  # None: the recipe's SOLVER.MAX_ITER
    sparse_iters: int | None
    tune_iters: int
    qat_iters: int
    percents: tuple[float, ...]
    tune_percent: dict[str, float]
    pruning_runs: tuple[tuple[str, float | None, str], ...]  # (course model, PRUNE.SR or None, PRUNE.SR_WEIGHT)
    mobilenet_iters: tuple[int, int]  # dense training, coupled sparse training
    mobilenet_size: int
    mobilenet_percents: tuple[float, ...]
    latency_runs: int
    speed_batch: int
    speed_steps: int
    speed_warmup: int
    onnx_runs: int
    int8_configs: tuple[str, ...]  # IAO configs timed fp32 vs int8 in ONNX Runtime with random weights
    int8_runs: int
    solver: tuple[str, ...] = ()  # overrides after the recipe's (and the course profile's) own
    threads: int | None = None  # torch threads for everything (None: every core, as ssdlab trains)

    def data_overrides(self) -> list[str]:
        """DATASETS.TRAIN / DATASETS.TEST on this profile's shapes data (none on the course profile's own)."""
        if self.data == Path(PROFILES[self.course]["data"]):
            return []
        return ["DATASETS.TRAIN", f"['{self.data}:train']", "DATASETS.TEST", f"['{self.data}:val']"]

    def overrides(self, iterations: int | None = None) -> list[str]:
        """Data, the profile's solver settings and (when given) SOLVER.MAX_ITER overrides for a recipe (none for
        the full profile: the course's own recipe, so the run is the course's stage)."""
        threads = ["SOLVER.NUM_THREADS", str(self.threads)] if self.threads else []
        return [*self.data_overrides(), *self.solver, *threads,
                *(["SOLVER.MAX_ITER", str(iterations)] if iterations else [])]

    def prepare_data(self) -> Path:
        """Generate (or reuse) the shapes data of this profile."""
        return generate_shapes(self.data, n_train=self.n_train, n_val=self.n_val)


FULL = BenchProfile(
    course="full", data=Path(PROFILES["full"]["data"]), n_train=PROFILES["full"]["train"],
    n_val=PROFILES["full"]["val"], course_iters=None, sparse_iters=None, tune_iters=500, qat_iters=500,
    percents=(0.3, 0.4, 0.5, 0.53, 0.55, 0.6, 0.7, 0.8), tune_percent={"plain": 0.6, "residual": 0.5},
    pruning_runs=(("plain", None, "none"), ("plain", 0.01, "none"), ("plain", 0.01, "params"), ("residual", None, "none")),
    mobilenet_iters=(2500, 1000), mobilenet_size=192, mobilenet_percents=(0.3, 0.5, 0.7),
    latency_runs=30, speed_batch=8, speed_steps=10, speed_warmup=2, onnx_runs=50,
    int8_configs=("vgg_bn_ssd300_hand_fpga_sparse_quan_w8a8_IAO.yaml",), int8_runs=30)

SMOKE = BenchProfile(
    course="smoke", data=ROOT / "build" / "bench-smoke" / "shapes", n_train=32, n_val=8, course_iters=3,
    sparse_iters=3, tune_iters=2, qat_iters=2, percents=(0.3, 0.6), tune_percent={"plain": 0.6, "residual": 0.6},
    pruning_runs=(("plain", None, "none"), ("residual", None, "none")), mobilenet_iters=(2, 2), mobilenet_size=128,
    mobilenet_percents=(0.5,), latency_runs=3, speed_batch=2, speed_steps=1, speed_warmup=0, onnx_runs=3,
    int8_configs=("course/plain_quant.yaml",), int8_runs=2,
    solver=("SOLVER.BATCH_SIZE", "4", "SOLVER.WARMUP_ITERS", "0", "SOLVER.CHECKPOINT_PERIOD", "0",
            "DATA_LOADER.NUM_WORKERS", "0"), threads=1)  # one thread: robust on a machine shared with other jobs

BENCH_PROFILES = {"full": FULL, "smoke": SMOKE}


def at_root(profile: BenchProfile) -> BenchProfile:
    """The profile, after making the repository the working folder when it is the full one (its relative paths:
    the course's data and stages)."""
    if profile.course == "full":
        os.chdir(ROOT)
    return profile


def get_profile(name: str, data: Path | None = None) -> BenchProfile:
    """A profile by name ('full' or 'smoke'), optionally on another shapes folder."""
    profile = BENCH_PROFILES[name]
    return replace(profile, data=Path(data)) if data else profile
