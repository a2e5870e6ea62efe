"""The course models on the built-in shapes data: profiles, stages, the committed baselines, the tour.

Profiles (SSDLAB_PROFILE): `full` (default) uses the course recipes as they are and writes to
runs/; `smoke` shrinks data and iterations to finish in about a minute (runs/smoke/);
`pretrained` is the longer recipe behind the baselines committed in ssdlab/checkpoints/
(`make pretrained`), which the compression lessons start from.

Stages: every run of the course (lesson training, sparse training, QAT, fine-tuning) lives in
`<root>/<stage>-<digest>`, the digest taken over its effective training settings and its start's
weights (`run_digest`). The same request is computed once and reused by whoever asks for it
through these helpers (the tour, the notebooks, the benchmarks), and different requests never share a folder, so
nothing retrains or deletes another caller's run. (The CLI writes to the recipe's OUTPUT_DIR.) A pruned
model is written beside its sparse model, named by mode and percent (`prune_stage`).
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from ssdlab.api import prune_channels
from ssdlab.config import PACKAGE_CONFIGS, load_config
from ssdlab.data.catalog import datasets
from ssdlab.data.shapes import TRAIN_IMAGES, generate_shapes
from ssdlab.engine import checkpoint as ckpt
from ssdlab.engine.checkpoint import release_copy
from ssdlab.engine.profile import compare_latency, latency_note, measure, session_call
from ssdlab.engine.train import (RESUMABLE_CHANGES, TrainResult, fine_tune_start, flat_settings, run_changed,
                                 start_digest, train)
from ssdlab.errors import ConfigError
from ssdlab.model.cfg import read_backbone_text
from ssdlab.prune.report import PruneReport
from ssdlab.prune.surgery import make_plan
from ssdlab.viz.demo import run_demo

log = logging.getLogger(__name__)

COURSE_MODELS = ("plain", "residual")
COURSE_PRUNE_PERCENT = 0.5  # the tour's prune ratio (lowered to the highest safe ratio when needed)
QAT_FREEZE = (0.8, 0.9)  # fractions of a QAT run after which BN statistics / activation ranges stop moving
QAT_ITERS = {"full": 500, "pretrained": 500, "smoke": 4}  # QAT iterations: the tour, notebooks 05 and 07
LESSON_ITERS = {"full": 1200, "pretrained": 1200, "smoke": 12}  # notebook 01's training run (and the tour's)
PRUNED_QAT_ITERS = {"full": 200, "pretrained": 200, "smoke": 4}  # notebook 06: QAT of the pruned model
BASELINES = Path(__file__).resolve().parent / "checkpoints"
PROFILES: dict[str, dict[str, Any]] = {
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


def run_digest(cfg) -> str:
    """8 hex digits naming a run: its training settings (not OUTPUT_DIR, nor what may change on resume), the text of
    its backbone cfg, and the weights of its start and teacher (not their paths)."""
    settings = {key: value for key, value in flat_settings(cfg.to_dict()).items()
                if not key.startswith(RESUMABLE_CHANGES) and key not in ("MODEL.WEIGHTS", "MODEL.BACKBONE.CFG",
                                                                          "DISTILL.TEACHER")}
    settings["backbone cfg"] = read_backbone_text(cfg)[0]
    settings["start"] = start_digest(fine_tune_start(cfg))
    if cfg.DISTILL.TEACHER:
        settings["teacher"] = ckpt.weights_digest(ckpt.read_checkpoint(cfg.DISTILL.TEACHER))
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]


def course_config(model: str, profile: str | None = None, extra: list[str] | None = None, step: str = "shapes",
                  stage: str | None = None):
    """A course recipe (`<model>_<step>.yaml`: step shapes, sparse or quant) under a profile, with its data; it runs
    in <root>/<stage>-<run_digest> (stage: `<model>` or `<model>_<step>`) unless extra sets OUTPUT_DIR."""
    settings = PROFILES[profile or current_profile()]
    data = settings["data"]
    overrides = ["DATASETS.TRAIN", f"['{data}:train']", "DATASETS.TEST", f"['{data}:val']",
                 *settings["overrides"], *(extra or [])]
    cfg = load_config(PACKAGE_CONFIGS / "course" / f"{model}_{step}.yaml", overrides)
    if "OUTPUT_DIR" in overrides[0::2]:
        return cfg
    return in_stage(cfg, stage or (model if step == "shapes" else f"{model}_{step}"), profile)


def in_stage(cfg, stage: str, profile: str | None = None):
    """cfg run in the profile's <root>/<stage>-<run_digest>: the folder every caller of the same request shares."""
    cfg = cfg.clone()
    cfg.OUTPUT_DIR = f"{PROFILES[profile or current_profile()]['root']}/{stage}-{run_digest(cfg)}"
    return cfg.freeze()


def quant_config(kind: str, wbits: int, abits: int, iterations: int, profile: str | None = None,
                 start: str | Path | None = None, extra: list[str] | None = None, model: str = "plain",
                 stage: str | None = None):
    """A course model's QAT recipe (<model>_quant.yaml) for one quantizer, from `start` (its float baseline);
    stage: the run folder's name before its digest (default <model>_quant_<kind>_w<bits>a<bits>)."""
    name = f"{kind.lower()}_w{wbits}a{abits}"
    freeze_bn, freeze_observer = (int(iterations * f) for f in QAT_FREEZE)
    return course_config(model, profile, [
        "MODEL.WEIGHTS", str(start or baseline(model)), "QUANTIZATION.TYPE", kind,
        "QUANTIZATION.WBITS", str(wbits), "QUANTIZATION.ABITS", str(abits), "SOLVER.MAX_ITER", str(iterations),
        "SOLVER.WARMUP_ITERS", str(min(20, iterations // 4)), "QUANTIZATION.FREEZE_BN_ITER", str(freeze_bn),
        "QUANTIZATION.FREEZE_OBSERVER_ITER", str(freeze_observer), *(extra or [])],
        step="quant", stage=stage or f"{model}_quant_{name}")


def ptq_config(images: int, profile: str | None = None, start: str | Path | None = None,
               extra: list[str] | None = None, model: str = "plain"):
    """A course model's IAO W8A8 post-training quantization (ssdlab.quant.ptq) of `start` (its float baseline)
    on `images` calibration images: the QAT recipe, run in <root>/<model>_ptq<images>-<digest>."""
    return course_config(model, profile, ["MODEL.WEIGHTS", str(start or baseline(model)), "QUANTIZATION.TYPE", "IAO",
                                          "QUANTIZATION.WBITS", "8", "QUANTIZATION.ABITS", "8", *(extra or [])],
                         step="quant", stage=f"{model}_ptq{images}")


def lesson_config(model: str = "plain", profile: str | None = None):
    """Notebook 01's training run of a course model: the course recipe for LESSON_ITERS iterations."""
    profile = profile or current_profile()
    iterations = LESSON_ITERS[profile]
    return course_config(model, profile, ["SOLVER.MAX_ITER", str(iterations),
                                          "SOLVER.LOG_PERIOD", "20" if profile != "smoke" else "2"],
                         stage=f"{model}_{iterations}it")


def sparse_config(model: str = "plain", profile: str | None = None, start: str | Path | None = None,
                  extra: list[str] | None = None, stage: str | None = None):
    """Notebook 02's sparse training of a course model, from `start` (default: its committed baseline)."""
    return course_config(model, profile, ["MODEL.WEIGHTS", str(start or baseline(model)), *(extra or [])],
                         step="sparse", stage=stage)


def tune_stage(model: str, distilled: bool) -> str:
    """The stage of a pruned course model's fine-tune (notebook 04, the benchmarks): <model>_tuned_plain|distilled."""
    return f"{model}_tuned_{'distilled' if distilled else 'plain'}"


def quant_after(model: str, step: str) -> str:
    """The stage of IAO W8A8 QAT after a course step, "pruned" or "sparse" (notebook 06, the tour, the benchmarks)."""
    return f"{model}_{step}_quant_iao_w8a8"


def tune_config(pruned: str | Path, iterations: int, profile: str | None = None, teacher: str | Path | None = None,
                model: str = "plain", extra: list[str] | None = None):
    """A short fine-tune of a pruned course model (its own architecture, no sparsity, LR 0.0005), optionally
    distilled from `teacher`, in stage tune_stage."""
    return course_config(model, profile, [
        "MODEL.FINE_TUNE", "True", "MODEL.WEIGHTS", str(pruned), "PRUNE.TYPE", "no", "SOLVER.LR", "0.0005",
        "SOLVER.MAX_ITER", str(iterations), "SOLVER.WARMUP_ITERS", str(min(20, iterations // 4)),
        "SOLVER.EVAL_PERIOD", "0", "SOLVER.CHECKPOINT_PERIOD", "0", "DISTILL.TEACHER", str(teacher or ""),
        *(extra or [])], stage=tune_stage(model, bool(teacher)))


def pruned_path(sparse: str | Path, percent: float, mode: str = "normal", round_to: int = 1,
                drop_levels: bool = False) -> Path:
    """Where prune_stage writes the compact model of a sparse checkpoint: beside it, named by mode, percent,
    (when kept widths are rounded up to a multiple) that multiple, and _max when head levels were dropped."""
    sparse = Path(sparse)
    rounded = f"_r{round_to}" if round_to > 1 else ""
    return sparse.parent / f"{sparse.stem}_{mode}_p{percent:g}{rounded}{'_max' if drop_levels else ''}.pt"


def prune_stage(sparse: str | Path, cfg, percent: float, mode: str = "normal", dataset=None,
                quick: bool = False, round_to: int = 1, drop_levels: bool = False) -> PruneReport:
    """Prune a sparse checkpoint into pruned_path (the same request gives the same file: notebooks 04, 06, tour,
    benchmarks); round_to > 1 rounds every kept width up to a multiple of it (`prune --regular 1`; CPU kernels run
    whole blocks of 8 or 16 channels); drop_levels drops the head levels after an emptied layer (`--max 1`)."""
    if round_to > 1:
        cfg = cfg.clone()
        cfg.PRUNE.ROUND_TO = round_to
    return prune_channels(sparse, percent, mode, cfg, regular=round_to > 1, drop_levels=drop_levels, quick=quick,
                          dataset=dataset, tag=pruned_path(sparse, percent, mode, round_to, drop_levels).stem)


def train_recipe(cfg) -> TrainResult:
    """Train cfg: reuse or resume its run in OUTPUT_DIR, or start over when that run had other settings."""
    if run_changed(cfg):
        log.warning("%s holds a run of an older recipe: training again from the start", cfg.OUTPUT_DIR)
        return train(cfg, resume=False)
    return train(cfg)


def train_course_model(model: str, profile: str | None = None, cfg=None) -> dict:
    """Generate data if needed, train (or resume/reuse) one course model (cfg: default its course recipe), draw
    detections on four val images into OUTPUT_DIR/demo, and measure it."""
    data = prepare_data(profile)
    cfg = cfg or course_config(model, profile)
    start = time.perf_counter()
    result = train_recipe(cfg)
    net = ckpt.load(result.checkpoint)
    demo_in = Path(cfg.OUTPUT_DIR) / "demo_inputs"
    demo_in.mkdir(parents=True, exist_ok=True)
    for path in sorted((data / "images" / "val").glob("*.png"))[:4]:
        (demo_in / path.name).write_bytes(path.read_bytes())
    run_demo(net, cfg, demo_in, Path(cfg.OUTPUT_DIR) / "demo", score_threshold=0.4)
    return summary_row(f"{model}-trained", net, result, time.perf_counter() - start)


def summary_row(name: str, net, result, seconds: float) -> dict:
    """One row of the tour's summary: size, cost, latency and the run's final metrics."""
    return {**measure(name, net, None, net.cfg), "voc_map": result.metrics.get("voc_map", float("nan")),
            "coco_ap": result.metrics.get("coco_ap", float("nan")), "seconds": seconds,
            "checkpoint": str(result.checkpoint)}


def baseline_row(model: str, cfg, dataset) -> dict:
    """The committed baseline the compression lessons start from, evaluated on the profile's test set."""
    began = time.perf_counter()
    row = measure(f"{model}-baseline", ckpt.load(baseline(model)), dataset, cfg)
    return {**row, "seconds": time.perf_counter() - began, "checkpoint": str(baseline(model))}


def quantize_row(model: str, name: str, start: str | Path, iterations: int, profile: str | None = None,
                 stage: str | None = None) -> dict:
    """IAO W8A8 QAT of `start` (a float checkpoint of `model`), measured; its ONNX Runtime int8 latency next to
    the fp32 latency of its start."""
    began = time.perf_counter()
    cfg = quant_config("IAO", 8, 8, iterations, profile, start, model=model, stage=stage)
    result = train_recipe(cfg)
    net = ckpt.load(result.checkpoint)
    row = summary_row(name, net, result, time.perf_counter() - began)
    timing = ort_int8_vs_fp32(net, ckpt.load(start))
    if timing is None:
        return {**row, "ort_ms": None, "ort_ratio": None}
    int8, fp32 = timing["int8"]["median_ms"], timing["fp32"]["median_ms"]
    return {**row, "ort_ms": int8, "ort_ratio": int8 / fp32, "ort_note": latency_note(timing["int8"])}


def ort_int8_vs_fp32(quantized, float_model, threads: int = 1) -> dict | None:
    """compare_latency in ONNX Runtime on `threads` threads of an IAO model's int8 graph ('int8') and a float
    model's fp32 graph ('fp32'), interleaved; None without onnx and onnxruntime (pip install 'ssdlab[deploy]')."""
    if not (importlib.util.find_spec("onnx") and importlib.util.find_spec("onnxruntime")):
        return None
    from ssdlab.export.onnx import write_onnx
    from ssdlab.export.qdq import write_int8_onnx
    from ssdlab.export.runtime import onnx_session

    size = quantized.cfg.INPUT.IMAGE_SIZE
    with tempfile.TemporaryDirectory() as folder:
        graphs = {"int8": write_int8_onnx(quantized, Path(folder), "int8"),
                  "fp32": write_onnx(float_model, Path(folder), "fp32")}
        calls = {kind: session_call(onnx_session(path, threads), size) for kind, path in graphs.items()}
        return compare_latency(calls, threads=threads)


def sparse_and_prune(model: str, profile: str | None = None) -> list[dict]:
    """Notebooks 02 and 04: sparse-train a course model from its baseline, prune it (no fine-tune), measure both."""
    start = time.perf_counter()
    cfg = sparse_config(model, profile)
    sparse = train_recipe(cfg).checkpoint
    seconds = time.perf_counter() - start
    percent = min(COURSE_PRUNE_PERCENT, make_plan(ckpt.load(sparse), 0.0, cfg.PRUNE.TYPE).highest_safe)
    report = prune_stage(sparse, cfg, percent, cfg.PRUNE.TYPE, datasets(cfg, False), quick=True)
    original, compact = report.rows[0], report.rows[-1]
    return [{**original, "model": f"{model}-sparse", "seconds": seconds, "checkpoint": str(sparse)},
            {**compact, "model": f"{model}-pruned", "seconds": time.perf_counter() - start - seconds,
             "checkpoint": str(report.files["checkpoint"])}]


def _ort_cells(row: dict) -> str:
    """The ONNX Runtime int8 latency and its ratio to fp32, or dashes for the float rows."""
    if row.get("ort_ms") is None:
        return f"{'-':>8} {'-':>7}"
    return f"{row['ort_ms']:>8.2f} {row['ort_ratio']:>6.2f}x"


def format_summary(rows: list[dict]) -> str:
    """The tour's summary table."""
    lines = [f"{'model':<18} {'params':>9} {'MACs(M)':>8} {'MiB':>6} {'ms':>6} {'int8 ms':>8} {'vs fp32':>7} "
             f"{'VOC mAP@0.5':>12} {'COCO AP':>8} {'time(s)':>8}  checkpoint"]
    for r in rows:
        lines.append(f"{r['model']:<18} {r['params']:>9,} {r['macs'] / 1e6:>8.1f} {r['size_mib']:>6.2f} "
                     f"{r['latency_ms']:>6.1f} {_ort_cells(r)} {r['voc_map']:>12.4f} {r['coco_ap']:>8.4f} "
                     f"{r['seconds']:>8.0f}  {r['checkpoint']}")
    return "\n".join(lines)


def run_tour(profile: str | None = None) -> str:
    """The course headless, in the notebooks' order and with their runs (shared with them): per course model,
    lesson-01 training, the committed baseline, sparse training and pruning from it (02, 04), IAO W8A8 QAT of
    the baseline (05) and of the pruned model (06); the summary table."""
    profile = profile or current_profile()
    rows = []
    for model in COURSE_MODELS:
        rows.append(train_course_model(model, profile, lesson_config(model, profile)))
        cfg = sparse_config(model, profile)
        rows.append(baseline_row(model, cfg, datasets(cfg, is_train=False)))
        sparse, pruned = sparse_and_prune(model, profile)
        rows += [sparse, pruned,
                 quantize_row(model, f"{model}-quantized", baseline(model), QAT_ITERS[profile], profile),
                 quantize_row(model, f"{model}-pruned+q", pruned["checkpoint"], PRUNED_QAT_ITERS[profile], profile,
                              stage=quant_after(model, "pruned"))]
    notes = {r["ort_note"] for r in rows if r.get("ort_note")}
    return (f"ssdlab tour ({profile} profile; VOC mAP = area AP at IoU 0.5; ms: PyTorch; int8 ms: ONNX Runtime "
            f"int8 and its ratio to the fp32 graph of the float model it came from, {', '.join(notes) or '-'})\n"
            + format_summary(rows))


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
    """Every checkpoint of a course model made so far: the baseline, finished runs and the models pruned from them,
    named by stage (`plain_sparse`, `plain_sparse/normal_p0.5`), with the run digest only where two runs share a stage."""
    root = Path(PROFILES[profile or current_profile()]["root"])
    found = {"baseline": baseline(model)}
    for folder in sorted(p for p in root.glob(f"{model}*") if p.is_dir()):
        if (folder / "model_final.pt").is_file():
            found[folder.name] = folder / "model_final.pt"
        for pruned in sorted(folder.glob("model_final_*.pt")):
            found[f"{folder.name}/{pruned.stem.removeprefix('model_final_')}"] = pruned
    return short_names(found)


def short_names(paths: dict[str, Path]) -> dict[str, Path]:
    """The names with each run folder's '-<digest>' dropped where no other run of the same stage is listed; where
    several are, the settings that tell them apart (`plain_ptq256 (QUANTIZATION.FINAL True)`), else the digest."""
    def short(name: str) -> str:
        folder, _, rest = name.partition("/")
        return "/".join(filter(None, [folder.rsplit("-", 1)[0], rest]))

    groups: dict[str, list[str]] = {}
    for name in paths:
        groups.setdefault(short(name), []).append(name)
    labels = {}
    for stage, names in groups.items():
        if len(names) == 1:
            labels[names[0]] = stage
            continue
        apart = settings_apart([paths[n].parent / "config.yaml" for n in names])
        labels.update({name: f"{stage} ({apart[i]})" if apart else name for i, name in enumerate(names)})
    return {labels[name]: path for name, path in paths.items()}


def settings_apart(configs: list[Path]) -> list[str] | None:
    """For each run's config.yaml, 'KEY value, ...' of the training settings on which the runs differ; None when a
    file is missing or two runs share every setting."""
    if not all(c.is_file() for c in configs):
        return None
    flat = [flat_settings(yaml.safe_load(c.read_text()) or {}) for c in configs]
    keys = sorted(k for k in set().union(*flat) if not k.startswith(RESUMABLE_CHANGES) and k != "MODEL.WEIGHTS"
                  and len({json.dumps(f.get(k)) for f in flat}) > 1)
    shown = [{k: Path(v).name if isinstance(v, str) and "/" in v else v for k, v in f.items()} for f in flat]
    labels = [", ".join(f"{k} {f.get(k)}" for k in keys) for f in shown]
    return labels if keys and len(set(labels)) == len(labels) else None


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
        spec = net.quant_spec
        row.update(quantization=f"{spec.kind} W{spec.wbits}A{spec.abits}" if spec else "float",
                   map_from="checkpoint" if stored else "evaluated", checkpoint=str(path))
        rows.append(row)
    return rows
