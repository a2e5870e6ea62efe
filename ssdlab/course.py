"""The course models on the built-in shapes data: profiles, training, the committed baselines, the tour.

Profiles (SSDLAB_PROFILE): `full` (default) uses the course recipes as they are and writes to
runs/; `smoke` shrinks data and iterations to finish in about a minute (runs/smoke/);
`pretrained` is the longer recipe behind the baselines committed in ssdlab/checkpoints/
(`make pretrained`), which the compression lessons start from.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from ssdlab.config import PACKAGE_CONFIGS, load_config
from ssdlab.data.shapes import TRAIN_IMAGES, generate_shapes
from ssdlab.engine import checkpoint as ckpt
from ssdlab.engine.demo import run_demo
from ssdlab.engine.checkpoint import release_copy
from ssdlab.engine.train import TrainResult, datasets, run_changed, train
from ssdlab.errors import ConfigError
from ssdlab.prune.report import measure, prune_checkpoint
from ssdlab.prune.surgery import make_plan

log = logging.getLogger(__name__)

COURSE_MODELS = ("plain", "residual")
COURSE_PRUNE_PERCENT = 0.5  # the tour's prune ratio (lowered to the highest safe ratio when needed)
QAT_FREEZE = (0.8, 0.9)  # fractions of a QAT run after which BN statistics / activation ranges stop moving
QAT_ITERS = {"full": 500, "pretrained": 500, "smoke": 4}  # QAT iterations: the tour, notebooks 05 and 07
BASELINES = Path(__file__).resolve().parent / "checkpoints"
PROFILES = {
    "full": {"root": "runs", "data": "datasets/shapes", "train": TRAIN_IMAGES, "val": 500, "overrides": []},
    "smoke": {"root": "runs/smoke", "data": "runs/smoke/shapes", "train": 96, "val": 24,
              "overrides": ["SOLVER.MAX_ITER", "12", "SOLVER.BATCH_SIZE", "8", "SOLVER.WARMUP_ITERS", "4",
                            "SOLVER.LR_STEPS", "[8]", "SOLVER.CHECKPOINT_PERIOD", "0", "SOLVER.EVAL_PERIOD", "0",
                            "DATA_LOADER.NUM_WORKERS", "0"]},
    "pretrained": {"root": "runs/pretrained", "data": "datasets/shapes", "train": TRAIN_IMAGES, "val": 500,
                   "overrides": ["SOLVER.MAX_ITER", "16000", "SOLVER.EVAL_PERIOD", "4000"]},
}


def current_profile() -> str:
    """SSDLAB_PROFILE ('full' or 'smoke')."""
    name = os.environ.get("SSDLAB_PROFILE", "full")
    if name not in PROFILES:
        raise ConfigError(f"SSDLAB_PROFILE = {name!r}; use one of {', '.join(PROFILES)}")
    return name


def prepare_data(profile: str | None = None) -> Path:
    """The profile's shapes dataset, generated the first time (the same bytes every time)."""
    settings = PROFILES[profile or current_profile()]
    return generate_shapes(Path(settings["data"]), n_train=settings["train"], n_val=settings["val"])


def course_config(model: str, profile: str | None = None, extra: list[str] | None = None, step: str = "shapes"):
    """A course recipe (`<model>_<step>.yaml`: step shapes, sparse or quant) under a profile, with data and output."""
    settings = PROFILES[profile or current_profile()]
    data = settings["data"]
    out = model if step == "shapes" else f"{model}_{step}"
    overrides = ["DATASETS.TRAIN", f"['{data}:train']", "DATASETS.TEST", f"['{data}:val']",
                 "OUTPUT_DIR", f"{settings['root']}/{out}", *settings["overrides"], *(extra or [])]
    return load_config(PACKAGE_CONFIGS / "course" / f"{model}_{step}.yaml", overrides)


def quant_config(kind: str, wbits: int, abits: int, iterations: int, profile: str | None = None,
                 start: str | Path | None = None, extra: list[str] | None = None, model: str = "plain"):
    """A course model's QAT recipe (<model>_quant.yaml) for one quantizer, from `start` (its float baseline)."""
    name = f"{kind.lower()}_w{wbits}a{abits}"
    freeze_bn, freeze_observer = (int(iterations * f) for f in QAT_FREEZE)
    return course_config(model, profile, [
        "MODEL.WEIGHTS", str(start or baseline(model)), "QUANTIZATION.TYPE", kind,
        "QUANTIZATION.WBITS", str(wbits), "QUANTIZATION.ABITS", str(abits), "SOLVER.MAX_ITER", str(iterations),
        "SOLVER.WARMUP_ITERS", str(min(20, iterations // 4)), "QUANTIZATION.FREEZE_BN_ITER", str(freeze_bn),
        "QUANTIZATION.FREEZE_OBSERVER_ITER", str(freeze_observer),
        "OUTPUT_DIR", f"{PROFILES[profile or current_profile()]['root']}/{model}_quant_{name}", *(extra or [])],
        step="quant")


def train_recipe(cfg) -> TrainResult:
    """Train cfg: reuse or resume its run in OUTPUT_DIR, or start over when that run had other settings."""
    if run_changed(cfg):
        log.warning("%s holds a run of an older recipe: training again from the start", cfg.OUTPUT_DIR)
        return train(cfg, resume=False)
    return train(cfg)


def train_course_model(model: str, profile: str | None = None) -> dict:
    """Generate data if needed, train (or resume/reuse) one course model, and measure it."""
    data = prepare_data(profile)
    cfg = course_config(model, profile)
    start = time.perf_counter()
    result = train_recipe(cfg)
    net = ckpt.load(result.checkpoint)
    demo_dir = data / "images" / "val"
    demo_in = Path(cfg.OUTPUT_DIR) / "demo_inputs"
    demo_in.mkdir(parents=True, exist_ok=True)
    for path in sorted(demo_dir.glob("*.png"))[:4]:
        (demo_in / path.name).write_bytes(path.read_bytes())
    run_demo(net, cfg, demo_in, Path(cfg.OUTPUT_DIR) / "demo", score_threshold=0.4)
    return summary_row(model, net, result, time.perf_counter() - start)


def summary_row(name: str, net, result, seconds: float) -> dict:
    """One row of the tour's summary: size, cost, latency and the run's final metrics."""
    return {**measure(name, net, None, net.cfg), "voc_map": result.metrics.get("voc_map", float("nan")),
            "coco_ap": result.metrics.get("coco_ap", float("nan")), "seconds": seconds,
            "checkpoint": str(result.checkpoint)}


def quantize_row(model: str, name: str, start: str | Path, profile: str | None = None,
                 extra: tuple[str, ...] = ()) -> dict:
    """IAO W8A8 QAT of a tour checkpoint of `model` (QAT_ITERS iterations), measured."""
    began = time.perf_counter()
    profile = profile or current_profile()
    cfg = quant_config("IAO", 8, 8, QAT_ITERS[profile], profile, start,
                       ["OUTPUT_DIR", f"{PROFILES[profile]['root']}/tour_{name}", *extra], model)
    result = train_recipe(cfg)
    return summary_row(name, ckpt.load(result.checkpoint), result, time.perf_counter() - began)


def sparse_and_prune(model: str, dense: str | Path, profile: str | None = None) -> list[dict]:
    """Sparse-train a trained course model, prune it (no fine-tune), and measure both."""
    start = time.perf_counter()
    cfg = course_config(model, profile, ["MODEL.WEIGHTS", str(dense)], step="sparse")
    sparse = train_recipe(cfg).checkpoint
    seconds = time.perf_counter() - start
    percent = min(COURSE_PRUNE_PERCENT, make_plan(ckpt.load(sparse), 0.0, cfg.PRUNE.TYPE).highest_safe)
    report = prune_checkpoint(sparse, cfg, percent, cfg.PRUNE.TYPE, quick=True, dataset=datasets(cfg, False))
    original, compact = report.rows[0], report.rows[-1]
    return [{**original, "model": f"{model}-sparse", "seconds": seconds, "checkpoint": str(sparse)},
            {**compact, "model": f"{model}-pruned", "seconds": time.perf_counter() - start - seconds,
             "checkpoint": str(report.files["checkpoint"])}]


def format_summary(rows: list[dict]) -> str:
    """The tour's summary table."""
    lines = [f"{'model':<16} {'params':>9} {'MACs(M)':>8} {'MiB':>6} {'ms':>6} {'VOC mAP@0.5':>12} "
             f"{'COCO AP':>8} {'time(s)':>8}  checkpoint"]
    for r in rows:
        lines.append(f"{r['model']:<16} {r['params']:>9,} {r['macs'] / 1e6:>8.1f} {r['size_mib']:>6.2f} "
                     f"{r['latency_ms']:>6.1f} {r['voc_map']:>12.4f} {r['coco_ap']:>8.4f} {r['seconds']:>8.0f}  "
                     f"{r['checkpoint']}")
    return "\n".join(lines)


def run_tour(profile: str | None = None) -> str:
    """Run every step of the course and return the summary table."""
    profile = profile or current_profile()
    rows = []
    for model in COURSE_MODELS:
        dense = train_course_model(model, profile)
        sparse, pruned = sparse_and_prune(model, dense["checkpoint"], profile)
        rows += [dense, sparse, pruned, quantize_row(model, f"{model}-quantized", dense["checkpoint"], profile),
                 quantize_row(model, f"{model}-pruned+q", pruned["checkpoint"], profile, ("QUANTIZATION.FINAL", "True"))]
    return f"ssdlab tour ({profile} profile; VOC mAP = area AP at IoU 0.5)\n" + format_summary(rows)


def baseline(model: str) -> Path:
    """The committed, well-trained checkpoint of a course model (ssdlab/checkpoints/<model>_shapes.pt)."""
    return BASELINES / f"{model}_shapes.pt"


def make_baselines(models: tuple[str, ...] = COURSE_MODELS) -> list[Path]:
    """Train each course model with the longer recipe and save a release copy as its baseline."""
    written = []
    for model in models:
        row = train_course_model(model, "pretrained")
        written.append(release_copy(row["checkpoint"], baseline(model)))
    return written


def course_checkpoints(profile: str | None = None, model: str = "plain") -> dict[str, Path]:
    """Every checkpoint of a course model made so far: the baseline, finished runs and pruned models (lesson*.pt)."""
    root = Path(PROFILES[profile or current_profile()]["root"])
    found = {"baseline": baseline(model)}
    for folder in sorted(p for p in root.glob(f"{model}*") if p.is_dir()):
        if (folder / "model_final.pt").is_file():
            found[folder.name] = folder / "model_final.pt"
        for pruned in sorted(folder.glob("lesson*.pt")):
            found[f"{folder.name}/{pruned.stem}"] = pruned
    return found


def measure_checkpoints(paths: dict[str, Path], dataset, cfg, latency: bool = True,
                        reuse_metrics: bool = True) -> list[dict]:
    """A `measure` row per checkpoint, plus its quantization; mAP stored by a run on cfg's test set is reused."""
    rows = []
    for name, path in paths.items():
        net = ckpt.load(path)
        stored = net.metrics if reuse_metrics and "voc_map" in net.metrics else None
        if stored and list(net.cfg.DATASETS.TEST[:1]) != list(cfg.DATASETS.TEST[:1]):
            stored = None  # evaluated on another test set: evaluate again
        row = measure(name, net, None if stored else dataset, cfg, latency=latency)
        if stored:
            row.update(voc_map=stored["voc_map"], coco_ap=stored.get("coco_ap"))
        spec = getattr(net, "quant_spec", None)
        row.update(quantization=f"{spec.kind} W{spec.wbits}A{spec.abits}" if spec else "float",
                   map_from="checkpoint" if stored else "evaluated", checkpoint=str(path))
        rows.append(row)
    return rows
