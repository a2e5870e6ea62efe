"""The training loop: iteration-based SGD with warm-up, checkpoints that resume, DDP, plugins.

Later lessons change training through plugins (ssdlab.engine.plugins), never by editing this loop:
the config picks them (ssdlab.lessons.plugins_from_config: sparse training, distillation, freezing
quantization observers) and `train(cfg, plugins=[...])` adds your own. Quantization-aware layers
are part of the model itself (ssdlab.model.build).
"""
from __future__ import annotations

import json
import logging
import os
import random
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, cast

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ssdlab.config import CfgNode
from ssdlab.data.catalog import datasets
from ssdlab.data.loader import make_train_loader
from ssdlab.engine import checkpoint as ckpt
from ssdlab.engine import distributed as dist
from ssdlab.engine.inference import class_list, evaluate_model
from ssdlab.engine.plugins import Plugin
from ssdlab.engine.precision import autocast, dtype_name, training_dtype
from ssdlab.engine.schedule import build_optimizer, build_scheduler
from ssdlab.errors import CheckpointError, ConfigError
from ssdlab.files import check_output_folder
from ssdlab.lessons import plugins_from_config
from ssdlab.model.build import build_model, fine_tune_model

log = logging.getLogger(__name__)

# Keys that describe the network itself: a fine-tuned checkpoint's values win over the recipe's.
ARCHITECTURE_KEYS = ("MODEL.NUM_CLASSES", "MODEL.PRIORS", "MODEL.BOX_HEAD", "INPUT.IMAGE_SIZE")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so the same seed gives the same numbers on CPU."""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def default_threads() -> int:
    """Cores available to this process, shared among the processes of this machine."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def scale_for_world(cfg: CfgNode, world: int) -> CfgNode:
    """The original SSD code's scaling for N processes: lr × N; MAX_ITER and LR_STEPS ÷ N (BATCH_SIZE is per process)."""
    if world == 1:
        return cfg
    cfg = cfg.clone()
    cfg.SOLVER.LR *= world
    cfg.SOLVER.MAX_ITER = max(1, cfg.SOLVER.MAX_ITER // world)
    cfg.SOLVER.LR_STEPS = [step // world for step in cfg.SOLVER.LR_STEPS]
    return cfg.freeze()


def fine_tune_start(cfg: CfgNode) -> dict | None:
    """The MODEL.WEIGHTS checkpoint a fine-tune starts from (read once, handed on); None when not fine-tuning."""
    return ckpt.read_checkpoint(cfg.MODEL.WEIGHTS) if cfg.MODEL.FINE_TUNE else None


def start_digest(start: dict | None) -> str | None:
    """weights_digest of a fine-tune's start (from fine_tune_start); None when not fine-tuning."""
    return ckpt.weights_digest(start) if start else None


def architecture_config(cfg: CfgNode, start: dict | None = None) -> CfgNode:
    """cfg with the MODEL.WEIGHTS checkpoint's architecture keys when MODEL.FINE_TUNE (a pruned model's
    priors and head levels, say), so data targets and the model agree; cfg itself otherwise.
    start: that checkpoint when the caller has read it already."""
    if not cfg.MODEL.FINE_TUNE:
        return cfg
    stored = ckpt.checkpoint_config(start or ckpt.read_checkpoint(cfg.MODEL.WEIGHTS), cfg.MODEL.WEIGHTS)
    cfg = cfg.clone()
    for dotted in ARCHITECTURE_KEYS:
        section, key = dotted.split(".")
        cfg[section][key] = stored[section][key]
    return cfg.freeze()


def initial_model(cfg: CfgNode, class_names: Iterable[str], start: dict | None = None) -> nn.Module:
    """A new model, or the MODEL.WEIGHTS checkpoint's when MODEL.FINE_TUNE (cfg from architecture_config;
    start: that checkpoint when the caller has read it already)."""
    if not cfg.MODEL.FINE_TUNE:
        return build_model(cfg, tuple(class_names))
    source = start or ckpt.read_checkpoint(cfg.MODEL.WEIGHTS)
    model = fine_tune_model(cfg, source["cfg_text"], tuple(class_names))
    ckpt.load_state_checked(model, source["model"], where=cfg.MODEL.WEIGHTS)
    log.info("fine-tuning from %s", cfg.MODEL.WEIGHTS)
    return model


def run_metrics(model: nn.Module, dataset, cfg: CfgNode, device: torch.device | str = "cpu") -> dict:
    """The metrics a run stores: VOC mAP, COCO AP and its breakdown on a test set."""
    result = evaluate_model(model, dataset, cfg, device)
    return {"voc_map": result["voc_map"], "coco_ap": result["coco_ap"], "voc_metric": result["voc"]["metric"],
            "coco": {k: result["coco"][k] for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")}}


def check_start_classes(start: dict, names: tuple[str, ...], where: str) -> None:
    """ConfigError when a fine-tune's MODEL.WEIGHTS checkpoint was trained on other classes than the data has."""
    stored = tuple(start.get("class_names") or ())
    if stored and stored != tuple(names):
        raise ConfigError(f"MODEL.WEIGHTS {where} detects {class_list(stored)} but the training data has "
                          f"{class_list(names)}; a fine-tune keeps its checkpoint's classes (MODEL.NUM_CLASSES "
                          "comes from it), so fine-tune on data with the same class list, or train these classes "
                          f"from scratch: MODEL.FINE_TUNE False MODEL.NUM_CLASSES {len(names)}")


def rng_state() -> dict:
    """Python, NumPy and torch RNG state as checkpoint-safe types."""
    kind, keys, pos, has_gauss, cached = cast(tuple, np.random.get_state())  # the legacy MT19937 tuple
    return {"python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
            "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached": float(cached)},
            "torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    """Restore what rng_state() saved."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])


RESUMABLE_CHANGES = ("OUTPUT_DIR", "TEST.", "DATASETS.TEST", "DATASETS.SKIP_BAD_IMAGES", "DATA_LOADER.",
                     "MODEL.DEVICE", "SOLVER.LOG_PERIOD", "SOLVER.CHECKPOINT_PERIOD", "SOLVER.EVAL_PERIOD",
                     "SOLVER.KEEP_LAST", "SOLVER.NUM_THREADS")  # a run hit a bad image: skip it and resume


def flat_settings(node: dict, prefix: str = "") -> dict:
    """{"SOLVER.LR": 0.004, ...}: every leaf of a nested config dict under its dotted key."""
    out = {}
    for key, value in node.items():
        if isinstance(value, dict):
            out.update(flat_settings(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def recipe_changes(stored: CfgNode, cfg: CfgNode) -> list[str]:
    """'KEY: stored -> now' for each training setting on which a run's stored config and cfg disagree; cfg as
    architecture_config leaves it (logging, checkpointing, loader and test settings may change on resume)."""
    old, new = flat_settings(stored.to_dict()), flat_settings(cfg.to_dict())
    keys = sorted(k for k in old.keys() | new.keys() if not k.startswith(RESUMABLE_CHANGES))
    return [f"{k}: {old.get(k, '(unset)')} -> {new.get(k, '(unset)')}" for k in keys if old.get(k) != new.get(k)]



def run_changes(state: dict, cfg: CfgNode, path: Path, start: str | None) -> list[str]:
    """recipe_changes of a stored run, plus a note when its MODEL.WEIGHTS start now holds other weights."""
    changes = recipe_changes(ckpt.checkpoint_config(state, str(path)), cfg)
    if state.get("start") is not None:  # the start is known by its weights: its path may differ (another clone)
        changes = [change for change in changes if not change.startswith("MODEL.WEIGHTS:")]
    if state.get("start") not in (None, start):  # runs saved before starts were recorded pass
        changes.append(f"MODEL.WEIGHTS: {cfg.MODEL.WEIGHTS} holds other weights than when this run started")
    return changes


def check_same_recipe(state: dict, cfg: CfgNode, path: Path, start: str | None) -> None:
    """CheckpointError when the run in OUTPUT_DIR was trained with other settings or another start than cfg."""
    changes = run_changes(state, cfg, path, start)
    if changes:
        listed = "; ".join(changes[:4]) + (f"; and {len(changes) - 4} more" if len(changes) > 4 else "")
        raise CheckpointError(f"{path} belongs to a run with other settings ({listed}); to start over, train "
                              "with --fresh (Python: resume=False) or choose another OUTPUT_DIR; to continue "
                              f"from it, add MODEL.FINE_TUNE True MODEL.WEIGHTS {path} with another OUTPUT_DIR")


def run_changed(cfg: CfgNode) -> bool:
    """True when cfg.OUTPUT_DIR holds a run trained with other settings than cfg (see recipe_changes)."""
    path = ckpt.last_checkpoint(cfg.OUTPUT_DIR)
    if path is None:
        return False
    start = fine_tune_start(cfg)
    return bool(run_changes(ckpt.read_checkpoint(path), architecture_config(cfg, start), path, start_digest(start)))


class GracefulStop:
    """Turns the first Ctrl-C (SIGINT) into a request to stop after the current iteration."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self) -> "GracefulStop":
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: leave Ctrl-C alone
            self._previous = None
        return self

    def _handle(self, _signum, _frame) -> None:
        if self.requested:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.requested = True
        log.warning("stopping after this iteration (Ctrl-C again to abort without saving)")

    def __exit__(self, *_exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


@dataclass
class TrainResult:
    """What a training run produced."""

    checkpoint: Path
    iteration: int
    finished: bool
    metrics: dict = field(default_factory=dict)
    train_seconds: float = 0.0
    reused: bool = False  # the run had already finished in OUTPUT_DIR and was not trained again
    calibrated_on: int | None = None  # post-training quantization: the images its ranges were observed on


class Trainer:
    """One training run of cfg in cfg.OUTPUT_DIR (resumes from OUTPUT_DIR/last_checkpoint)."""

    def __init__(self, cfg: CfgNode, plugins: Iterable[Plugin] = (), resume: bool = True, progress: bool = True):
        self.device = dist.local_device(cfg.MODEL.DEVICE)
        dist.init_distributed(self.device)
        self.start_state = fine_tune_start(cfg)  # read once: architecture, digest and weights come from it
        self.cfg = architecture_config(scale_for_world(cfg, dist.world_size()), self.start_state)  # as stored
        self.start = start_digest(self.start_state)  # stored, so a changed start is not taken for the same run
        self.plugins = plugins_from_config(self.cfg) + list(plugins)  # the config's lessons, then the caller's
        self.resume, self.progress = resume, progress
        self.output_dir = Path(self.cfg.OUTPUT_DIR)
        self.resumed_seconds = 0.0  # training time before the resume point
        self.metrics_path = self.output_dir / "metrics.jsonl"

    def setup(self) -> int:
        """Build data, model, optimizer and scheduler; return the iteration to start at."""
        if self.cfg.SOLVER.NUM_THREADS or self.device.type == "cpu":
            torch.set_num_threads(self.cfg.SOLVER.NUM_THREADS or default_threads())
        seed_everything(self.cfg.SOLVER.SEED)
        self.train_set = datasets(self.cfg, is_train=True)
        names = self.train_set.class_names
        if self.start_state is not None:
            check_start_classes(self.start_state, names, self.cfg.MODEL.WEIGHTS)
        if len(names) != self.cfg.MODEL.NUM_CLASSES:
            raise ConfigError(f"MODEL.NUM_CLASSES = {self.cfg.MODEL.NUM_CLASSES} but the training data has "
                              f"{len(names)} classes including background ({', '.join(names[1:])}); "
                              f"set MODEL.NUM_CLASSES {len(names)}")
        self.test_set = datasets(self.cfg, is_train=False) if self.cfg.DATASETS.TEST else None
        model = initial_model(self.cfg, names, self.start_state)
        self.start_state = None  # its weights are in the model now
        self.model = model.to(self.device)
        if self.cfg.SOLVER.CHANNELS_LAST:
            self.model = self.model.to(memory_format=torch.channels_last)
        for plugin in self.plugins:
            plugin.setup(self.model, self.device)
        self.compute_dtype = training_dtype(self.cfg, self.device)
        log.info("training in %s (SOLVER.PRECISION %s)", dtype_name(self.compute_dtype), self.cfg.SOLVER.PRECISION)
        self.optimizer = build_optimizer(self.cfg, self.model)
        self.scheduler = build_scheduler(self.cfg, self.optimizer)
        start = self._resume() if self.resume else 0
        self.wrapped = self._wrap_ddp(self.model)
        return start

    def _wrap_ddp(self, model: nn.Module) -> nn.Module:
        """DistributedDataParallel under torchrun, the model itself otherwise."""
        if dist.world_size() == 1:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def _resume(self) -> int:
        """Load OUTPUT_DIR/last_checkpoint (model, optimizer, scheduler, RNG) if there is one."""
        path = ckpt.last_checkpoint(self.output_dir)
        if path is None:
            return 0
        state = ckpt.read_checkpoint(path)
        check_same_recipe(state, self.cfg, path, self.start)
        ckpt.load_state_checked(self.model, state["model"], where=str(path))
        if "optimizer" in state:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            set_rng_state(state["rng"])
        self.resumed_seconds = float(state.get("metrics", {}).get("train_seconds", 0.0))
        log.info("resuming from %s at iteration %d", path, state["iteration"])
        return int(state["iteration"])

    def save(self, iteration: int, name: str | None = None, metrics: dict | None = None) -> Path:
        """Write a resumable checkpoint (rank 0 only), keep the last SOLVER.KEEP_LAST periodic ones."""
        path = self.output_dir / (name or f"model_{iteration:06d}.pt")
        if dist.is_main():
            state = ckpt.make_checkpoint(self.model, iteration, metrics,
                                         optimizer=self.optimizer.state_dict(),
                                         scheduler=self.scheduler.state_dict(), rng=rng_state())
            state["config"] = self.cfg.to_dict()
            if self.start:
                state["start"] = self.start
            ckpt.save_checkpoint(state, path)
            ckpt.write_last_checkpoint(self.output_dir, path)
            self._prune_old_checkpoints()
        dist.barrier()
        return path

    def _prune_old_checkpoints(self) -> None:
        """Delete periodic checkpoints beyond the newest SOLVER.KEEP_LAST."""
        periodic = sorted(self.output_dir.glob("model_[0-9]*.pt"))
        for old in periodic[:-self.cfg.SOLVER.KEEP_LAST or None] if self.cfg.SOLVER.KEEP_LAST else []:
            old.unlink(missing_ok=True)

    def log_metrics(self, record: dict) -> None:
        """Append one JSON line to OUTPUT_DIR/metrics.jsonl (rank 0)."""
        if dist.is_main():
            with self.metrics_path.open("a") as handle:
                handle.write(json.dumps(record) + "\n")

    def _trim_metrics(self, start: int) -> None:
        """Drop log lines of iterations a resumed run will redo."""
        if dist.is_main() and self.metrics_path.is_file():
            lines = [line for line in self.metrics_path.read_text().splitlines()
                     if line and json.loads(line).get("iter", 0) <= start]
            self.metrics_path.write_text("".join(line + "\n" for line in lines))

    def evaluate(self, iteration: int) -> dict:
        """VOC and COCO metrics on the first DATASETS.TEST set."""
        if self.test_set is None:
            return {}
        metrics = run_metrics(self.model, self.test_set, self.cfg, self.device)
        self.log_metrics({"iter": iteration, "eval": metrics})
        for plugin in self.plugins:
            record = plugin.eval_record(self.model)
            if record:
                self.log_metrics({"iter": iteration, **record})
        return metrics

    def step(self, images: torch.Tensor, targets: dict, iteration: int) -> dict:
        """One optimisation step; returns the float losses."""
        images = images.to(self.device, non_blocking=True)
        if self.cfg.SOLVER.CHANNELS_LAST:
            images = images.to(memory_format=torch.channels_last)
        targets = {k: v.to(self.device, non_blocking=True) for k, v in targets.items()}
        for plugin in self.plugins:
            targets.update(plugin.targets(images))
        with autocast(self.device, self.compute_dtype):
            losses = self.wrapped(images, targets)
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at iteration {iteration}; "
                                     "lower SOLVER.LR or raise SOLVER.WARMUP_ITERS")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for plugin in self.plugins:
            plugin.after_backward(self.model, iteration)
        self.optimizer.step()
        self.scheduler.step()
        return {"loss": loss.item(), **{k: v.item() for k, v in losses.items()}}

    def finished(self) -> TrainResult | None:
        """The run already finished in OUTPUT_DIR (model_final.pt at SOLVER.MAX_ITER), reused as it is; else None."""
        final = self.output_dir / "model_final.pt"
        if not (self.resume and final.is_file()):
            return None
        state = ckpt.read_checkpoint(final)
        check_same_recipe(state, self.cfg, final, self.start)
        if state["iteration"] < self.cfg.SOLVER.MAX_ITER or self._unevaluated(state):
            return None  # run() resumes from it: trains the missing iterations, or only evaluates
        metrics = dict(state.get("metrics", {}))
        return TrainResult(final, state["iteration"], True, metrics, metrics.pop("train_seconds", 0.0), reused=True)

    def _unevaluated(self, state: dict) -> bool:
        """True for a final checkpoint saved before its evaluation finished (stopped during it)."""
        return bool(self.cfg.DATASETS.TEST) and "voc_map" not in state.get("metrics", {})

    def run(self) -> TrainResult:
        """Train from the resume point to SOLVER.MAX_ITER; Ctrl-C saves and stops cleanly."""
        check_output_folder(self.output_dir, "OUTPUT_DIR", ConfigError)
        done = self.finished()  # not rebuilt, not re-evaluated
        if done is not None:
            return done
        start = self.setup()
        loader = make_train_loader(self.cfg, self.train_set, start, dist.rank(), dist.world_size())
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if dist.is_main():
            (self.output_dir / "config.yaml").write_text(self.cfg.dump())
        self._trim_metrics(start)
        solver = self.cfg.SOLVER
        self.model.train()
        bar = tqdm(total=solver.MAX_ITER, initial=start, desc="train", disable=not (self.progress and dist.is_main()))
        iteration, metrics, clock = start, {}, TrainClock(self.resumed_seconds)
        with GracefulStop() as stop:
            for images, targets, _ in loader:
                losses = self.step(images, targets, iteration)
                iteration += 1
                clock.count(images.shape[0] * dist.world_size())
                if iteration % solver.LOG_PERIOD == 0 or iteration == solver.MAX_ITER:
                    self._log_step(iteration, losses, clock, bar)
                bar.update(1)
                with clock.paused():
                    if solver.EVAL_PERIOD and iteration % solver.EVAL_PERIOD == 0 and iteration < solver.MAX_ITER:
                        metrics = self.evaluate(iteration)
                        self.model.train()
                    stopping = dist.broadcast_object(stop.requested)
                    if stopping or (solver.CHECKPOINT_PERIOD and iteration % solver.CHECKPOINT_PERIOD == 0):
                        path = self.save(iteration, metrics={**metrics, "train_seconds": clock.total})
                if stopping:
                    bar.close()
                    return TrainResult(path, iteration, False, metrics, clock.total)
        bar.close()
        seconds = clock.total
        self.save(iteration, name="model_final.pt", metrics={"train_seconds": seconds})  # safe before evaluating
        metrics = self.evaluate(iteration)
        final = self.save(iteration, name="model_final.pt", metrics={**metrics, "train_seconds": seconds})
        return TrainResult(final, iteration, True, metrics, seconds)

    def _log_step(self, iteration: int, losses: dict, clock: "TrainClock", bar) -> None:
        """Log losses, lr, throughput and training time; show them on the progress bar."""
        record = {"iter": iteration, "lr": self.optimizer.param_groups[0]["lr"],
                  "images_per_s": clock.rate(), "train_seconds": clock.total, **losses}
        self.log_metrics(record)
        bar.set_postfix(loss=f"{losses['loss']:.3f}", lr=f"{record['lr']:.2e}", img_s=f"{record['images_per_s']:.0f}")


class TrainClock:
    """Training wall time without evaluation and checkpoint pauses, and images/s since the last log."""

    def __init__(self, total: float = 0.0):
        self.total, self._images, self._since = total, 0, 0.0
        self._mark = time.perf_counter()

    def count(self, images: int) -> None:
        """Add the images of one step and the time since the previous call."""
        now = time.perf_counter()
        self.total += now - self._mark
        self._since += now - self._mark
        self._mark, self._images = now, self._images + images

    def rate(self) -> float:
        """Images per second since the last call of rate()."""
        rate = self._images / max(self._since, 1e-9)
        self._images, self._since = 0, 0.0
        return rate

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Time spent inside does not count as training."""
        yield
        self._mark = time.perf_counter()


def train(cfg: CfgNode, **options) -> TrainResult:
    """Train cfg (see Trainer for the options); the Python entry point behind `ssdlab train`."""
    return Trainer(cfg, **options).run()


def read_metrics(run: str | Path, key: str | None = None) -> list[dict]:
    """The records of a run's metrics.jsonl (run: its OUTPUT_DIR or a file in it), only those holding `key`;
    one record per iteration, the last written."""
    folder = Path(run) if Path(run).is_dir() else Path(run).parent
    path = folder / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: {run} is not a training run's folder (or a file in it)")
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    chosen = {r.get("iter"): r for r in records if key is None or key in r}
    return list(chosen.values())
