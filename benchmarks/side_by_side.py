"""Side by side: training speed against torchvision's SSDs, and fp32 vs int8 in ONNX Runtime.

    python benchmarks/side_by_side.py                 # writes the side-by-side section of RESULTS.md

Training images/s of ssdlab's MobileNetV2-SSDLite (320 px) and VGG16-BN SSD300 against
torchvision's `ssdlite320_mobilenet_v3_large` and `ssd300_vgg16` (no pretrained weights, 21
classes, nothing downloaded) at the same input size and batch, on random images with random
boxes: SGD steps after a warm-up step, each step timed from the ground-truth boxes to the
optimizer update. The prior matching and the loss are timed inside the step (ssdlab: the target
transform and MultiBoxLoss; torchvision: its proposal matcher and compute_loss) to give their
share of the step; the detectors take turns step by step, so both see the machine alike. Then the
plain course model in ONNX Runtime: the float baseline against an IAO W8A8 QAT checkpoint exported as
int8 QDQ, latency at batch 1 (one thread and every thread) and mAP on the val split; and the
fp32 vs int8 latency of the full-size IAO configuration (VGG16-BN SSD300, random weights).
One JSON record per comparison row (commit, machine, CPU flags; digests of the checkpoints) in
benchmarks/side_by_side.jsonl; the section between the side-by-side markers is generated from them.

    python benchmarks/side_by_side.py --only summary  # the section again from the records
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torchvision
from torch import Tensor, nn

from ssdlab.config import PACKAGE_CONFIGS, CfgNode, load_config
from ssdlab.course import baseline, course_config
from ssdlab.data.catalog import datasets
from ssdlab.data.transforms import build_target_transform
from ssdlab.engine import checkpoint as ckpt
from ssdlab.engine.inference import evaluate_model
from ssdlab.engine.profile import compare_latency, compare_sessions, count_params, torch_call
from ssdlab.export.onnx import write_onnx
from ssdlab.export.qdq import OnnxDetector
from ssdlab.export.runtime import onnx_session
from ssdlab.model.build import build_model
from ssdlab.quant.apply import calibrate

sys.path.insert(0, str(Path(__file__).resolve().parent))
from profiles import FULL, BenchProfile, at_root  # noqa: E402
from quantization import row_recipe  # noqa: E402
from records import checkpoint_fields, context, measured, regenerate, write_records  # noqa: E402

HERE = Path(__file__).resolve().parent
START, END = "<!-- side-by-side:start -->", "<!-- side-by-side:end -->"
PAIRS = [  # (ssdlab config, torchvision builder, input size)
    ("mobile_v2_ssd_voc0712.yaml", "ssdlite320_mobilenet_v3_large", 320),
    ("vgg_bn_ssd300_voc0712.yaml", "ssd300_vgg16", 300),
]
NUM_CLASSES = 21
BOXES_PER_IMAGE = 4


@dataclass
class Trainee:
    """A detector, its loss on (images, relative xyxy boxes, labels), and the stopwatch inside that loss."""

    model: nn.Module
    loss: Callable[[Tensor, list[Tensor], list[Tensor]], Tensor]
    clock: "Stopwatch"


class Stopwatch:
    """Seconds spent in named calls: wrapped callables and module forwards."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)

    def wrap(self, fn: Callable, name: str) -> Callable:
        """fn, timed under name."""
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - start
        return timed

    def hook(self, module: nn.Module, name: str) -> None:
        """Time every forward of module under name."""
        starts: list[float] = []

        def before(*_) -> None:
            starts.append(time.perf_counter())

        def after(*_) -> None:
            self.seconds[name] += time.perf_counter() - starts.pop()
        module.register_forward_pre_hook(before)
        module.register_forward_hook(after)


def random_batch(batch: int, size: int, seed: int) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """Images [B, 3, S, S] and per image BOXES_PER_IMAGE random xyxy boxes (relative) with labels 1..20."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, size, size, generator=g)
    corners = torch.rand(batch, BOXES_PER_IMAGE, 2, generator=g) * 0.6
    sides = 0.1 + torch.rand(batch, BOXES_PER_IMAGE, 2, generator=g) * 0.3
    boxes = torch.cat([corners, corners + sides], dim=2)
    labels = torch.randint(1, NUM_CLASSES, (batch, BOXES_PER_IMAGE), generator=g)
    return images, list(boxes), list(labels)


def ours(config: str) -> Trainee:
    """An ssdlab SSD (no ImageNet weights), timing its target transform and MultiBoxLoss."""
    cfg = load_config(PACKAGE_CONFIGS / config, ["MODEL.BACKBONE.PRETRAINED", "False"])
    model = build_model(cfg).train()
    encode = build_target_transform(cfg)
    clock = Stopwatch()
    encode = clock.wrap(encode, "matching")
    clock.hook(model.criterion, "loss")

    def loss(images: Tensor, boxes: list[Tensor], labels: list[Tensor]) -> Tensor:
        targets = [encode(box, label) for box, label in zip(boxes, labels)]
        losses = model(images, {"boxes": torch.stack([t[0] for t in targets]),
                                "labels": torch.stack([t[1] for t in targets])})
        return sum(losses.values())
    return Trainee(model, loss, clock)


def theirs(builder: str, size: int) -> Trainee:
    """A torchvision SSD (weights=None, weights_backbone=None), timing its proposal matcher and compute_loss."""
    model = getattr(torchvision.models.detection, builder)(weights=None, weights_backbone=None,
                                                           num_classes=NUM_CLASSES).train()
    clock = Stopwatch()
    model.proposal_matcher = clock.wrap(model.proposal_matcher, "matching")
    model.compute_loss = clock.wrap(model.compute_loss, "loss")

    def loss(images: Tensor, boxes: list[Tensor], labels: list[Tensor]) -> Tensor:
        targets = [{"boxes": box * size, "labels": label} for box, label in zip(boxes, labels)]
        return sum(model(list(images), targets).values())
    return Trainee(model, loss, clock)


def sgd_step(trainee: Trainee, optimizer: torch.optim.Optimizer, size: int, batch: int, seed: int) -> float:
    """One SGD step on a random batch; its seconds."""
    images, boxes, labels = random_batch(batch, size, seed)
    start = time.perf_counter()
    loss = trainee.loss(images, boxes, labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return time.perf_counter() - start


def training_speeds(trainees: list[Trainee], size: int, batch: int, steps: int, warmup: int = 1) -> list[dict]:
    """Images/s of each trainee over `steps` SGD steps after `warmup` untimed ones, the trainees taking turns
    step by step (so a busy moment of the machine slows them alike), and the matching + loss share of the step."""
    optimizers = [torch.optim.SGD(t.model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4) for t in trainees]
    totals = [0.0] * len(trainees)
    for step in range(warmup + steps):
        for k, (trainee, optimizer) in enumerate(zip(trainees, optimizers)):
            if step == warmup:
                trainee.clock.seconds.clear()
            seconds = sgd_step(trainee, optimizer, size, batch, seed=step)
            totals[k] += seconds if step >= warmup else 0.0
    return [{"images_per_s": batch * steps / total, "step_ms": 1000 * total / steps,
             "matching_ms": 1000 * t.clock.seconds["matching"] / steps, "loss_ms": 1000 * t.clock.seconds["loss"] / steps,
             "overhead_share": (t.clock.seconds["matching"] + t.clock.seconds["loss"]) / total,
             "params": count_params(t.model)} for t, total in zip(trainees, totals)]


def compare_training(profile: BenchProfile = FULL) -> list[dict]:
    """One row per pair: ssdlab vs torchvision at the same input size and batch."""
    rows = []
    for config, builder, size in PAIRS:
        torch.manual_seed(0)
        mine, other = training_speeds([ours(config), theirs(builder, size)], size, profile.speed_batch,
                                      profile.speed_steps, profile.speed_warmup)
        rows.append({"ours": config, "torchvision": builder, "size": size, "batch": profile.speed_batch,
                     "steps": profile.speed_steps, "warmup": profile.speed_warmup, "mine": mine, "theirs": other,
                     "ratio": mine["images_per_s"] / other["images_per_s"]})
    return rows


def interleaved_ort(paths: dict[str, Path], size: int, runs: int) -> dict[str, dict[str, float]]:
    """Median ONNX Runtime ms of each graph at batch 1 per thread count ({name: {threads: ms}}), the graphs timed
    interleaved (compare_sessions, 3 warm-up rounds) so that a slow spell of the machine falls on all alike."""
    timings = compare_sessions(paths, onnx_session, size, runs)
    return {name: {str(threads): timing[name]["median_ms"] for threads, timing in timings.items()} for name in paths}


def onnx_row(name: str, checkpoint: Path, out: Path, cfg: CfgNode) -> tuple[dict, Path, nn.Module]:
    """Export one checkpoint (int8 QDQ when it is IAO) and evaluate it in ONNX Runtime; its row, graph and model."""
    model = ckpt.load(checkpoint)
    path = write_onnx(model, out, name)
    metrics = evaluate_model(OnnxDetector(path, model, torch.get_num_threads()), datasets(cfg, False), cfg)
    return {"model": name, **checkpoint_fields(checkpoint), "file_mib": path.stat().st_size / 2 ** 20,
            "voc_map": metrics["voc_map"], "coco_ap": metrics["coco_ap"]}, path, model


def compare_onnx(iao_checkpoint: Path, profile: BenchProfile = FULL) -> list[dict]:
    """The float baseline and an IAO W8A8 model in ONNX Runtime and in PyTorch, each pair timed interleaved."""
    cfg = course_config("plain", profile.course, profile.overrides())
    size = cfg.INPUT.IMAGE_SIZE
    with tempfile.TemporaryDirectory() as folder:
        rows = {name: onnx_row(name, checkpoint, Path(folder), cfg)
                for name, checkpoint in (("fp32", baseline("plain")), ("int8", iao_checkpoint))}
        ort_ms = interleaved_ort({name: path for name, (_, path, _) in rows.items()}, size, profile.onnx_runs)
    torch_ms = compare_latency({name: torch_call(model, size) for name, (_, _, model) in rows.items()},
                               profile.onnx_runs)
    return [{**row, "torch_ms": torch_ms[name]["median_ms"], "ort_ms": ort_ms[name]}
            for name, (row, _, _) in rows.items()]


def calibrated_iao(config: str) -> tuple[nn.Module, nn.Module]:
    """An IAO model of a shipped config with random weights, its activation ranges observed on two random batches,
    and its float twin (same weights): enough to time both, not to detect anything."""
    overrides = ["MODEL.BACKBONE.PRETRAINED", "False"]
    torch.manual_seed(0)
    float_model = build_model(load_config(PACKAGE_CONFIGS / config, [*overrides, "QUANTIZATION.TYPE", "no"])).eval()
    torch.manual_seed(0)
    quantized = build_model(load_config(PACKAGE_CONFIGS / config, overrides))
    size = quantized.cfg.INPUT.IMAGE_SIZE
    batches = (torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 50 for seed in range(2))
    return float_model, calibrate(quantized, batches)


def full_size_int8(profile: BenchProfile = FULL) -> list[dict]:
    """fp32 vs int8 ONNX Runtime latency of the full-size IAO configurations (random weights)."""
    rows = []
    for config in profile.int8_configs:
        float_model, quantized = calibrated_iao(config)
        size = float_model.cfg.INPUT.IMAGE_SIZE
        with tempfile.TemporaryDirectory() as folder:
            paths = {"fp32": write_onnx(float_model, Path(folder), "fp32"),
                     "int8": write_onnx(quantized, Path(folder), "int8")}
            rows.append({"config": config, "size": size, "params": count_params(float_model),
                         "file_mib": {k: path.stat().st_size / 2 ** 20 for k, path in paths.items()},
                         "ort_ms": interleaved_ort(paths, size, profile.int8_runs)})
    return rows


TRAINING_NOTE = (
    "ratio = ssdlab / torchvision images/s. Matching + loss: share of the step time spent encoding the targets "
    "against the priors (ssdlab's target transform, which normally runs in the data loader; torchvision's proposal "
    "matcher) and in the loss forward (MultiBoxLoss with hard negative mining; torchvision's compute_loss).")
ONNX_NOTE = (
    "int8: the IAO model exported as a QDQ graph (ssdlab.export.qdq) with int8 weight initializers, which ONNX "
    "Runtime runs with QLinearConv kernels; its layers left in float (the input layer, and the heads unless "
    "QUANTIZATION.FINAL) keep float weights in the file. PyTorch runs the same int8 model with fake quantization, "
    "so slower than float.")
FULL_SIZE_NOTE = (
    "The seed's IAO W8A8 configuration with random weights whose activation ranges were observed on two random "
    "batches (latency does not depend on the weights' values; no mAP), against its float twin with the same "
    "weights, both exported by `python -m ssdlab export --format onnx`. At this size the convolutions dominate and "
    "int8 pays off; the 128 px course model above spends much of its time outside the convolutions (softmax, "
    "reshapes, quantize/dequantize, its narrow first layers), so its int8 graph gains less.")


def training_table(rows: list[dict]) -> list[str]:
    """The training-speed table and its note."""
    lines = ["| ssdlab | torchvision | input | batch | ssdlab images/s | torchvision images/s | ratio | "
             "ssdlab matching + loss | torchvision matching + loss |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mine, other = r["mine"], r["theirs"]
        lines.append(f"| {r['ours']} ({mine['params']:,} params) | {r['torchvision']} ({other['params']:,} params) | "
                     f"{r['size']} | {r['batch']} | {mine['images_per_s']:.2f} | {other['images_per_s']:.2f} | "
                     f"{r['ratio']:.2f} | {mine['overhead_share']:.1%} ({mine['matching_ms']:.0f} + "
                     f"{mine['loss_ms']:.0f} ms) | {other['overhead_share']:.1%} ({other['matching_ms']:.0f} + "
                     f"{other['loss_ms']:.0f} ms) |")
    return lines + ["", f"Mean of {rows[0]['steps']} SGD steps after {rows[0]['warmup']} warm-up step(s); a step "
                    "runs from the ground-truth boxes to the optimizer update. " + TRAINING_NOTE]


def threads_text(threads: str) -> str:
    """'1 thread' or 'N threads'."""
    return f"{threads} thread" + ("" if threads == "1" else "s")


def onnx_table(rows: list[dict], runs: int) -> list[str]:
    """The fp32 vs int8 ONNX Runtime table of the course model, and its note."""
    threads = list(rows[0]["ort_ms"])
    lines = ["| model | checkpoint | .onnx file (MiB) | " + " | ".join(f"ONNX Runtime ms, {threads_text(t)}" for t in threads)
             + " | PyTorch ms | VOC mAP@0.5 | COCO AP |", "|---|---|---|" + "---|" * len(threads) + "---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | `{r['checkpoint']}` | {r['file_mib']:.2f} | "
                     + " | ".join(f"{r['ort_ms'][t]:.2f}" for t in threads)
                     + f" | {r['torch_ms']:.2f} | {r['voc_map']:.4f} | {r['coco_ap']:.4f} |")
    fp32, int8 = rows
    speed = ", ".join(f"{fp32['ort_ms'][t] / int8['ort_ms'][t]:.2f}x at {threads_text(t)}" for t in threads)
    return lines + ["", f"Batch 1, median of {runs} runs, the two graphs timed in turn, and so the two PyTorch models; "
                    f"int8 against fp32 in ONNX Runtime: {speed}. " + ONNX_NOTE]


def full_size_table(rows: list[dict], runs: int) -> list[str]:
    """The fp32 vs int8 latency table of the full-size configurations, and its note."""
    if not rows:
        return []
    threads = list(rows[0]["ort_ms"]["fp32"])
    lines = ["| config | input | params | .onnx fp32 / int8 (MiB) | "
             + " | ".join(f"fp32 / int8 ms, {threads_text(t)} | speed-up" for t in threads) + " |",
             "|---|---|---|---|" + "---|---|" * len(threads)]
    for r in rows:
        cells = [f"{r['ort_ms']['fp32'][t]:.1f} / {r['ort_ms']['int8'][t]:.1f} | "
                 f"{r['ort_ms']['fp32'][t] / r['ort_ms']['int8'][t]:.2f}x" for t in threads]
        lines.append(f"| `{r['config']}` | {r['size']} | {r['params']:,} | {r['file_mib']['fp32']:.1f} / "
                     f"{r['file_mib']['int8']:.1f} | " + " | ".join(cells) + " |")
    return lines + ["", f"Batch 1, median of {runs} runs, the two graphs timed in turn. " + FULL_SIZE_NOTE]


def table(records: list[dict]) -> str:
    """The RESULTS.md section, generated from the records alone."""
    first, part = records[0], {p: [r for r in records if r["part"] == p] for p in ("training", "onnx", "full_size")}
    return "\n".join([
        START, "## Side by side: training speed against torchvision, int8 in ONNX Runtime", "",
        "Generated from `benchmarks/side_by_side.jsonl`. Measured: "
        + measured(records)
        + f"; torch threads: {first['threads']}. Command: `{first['command']}`", "",
        "### Training images/s (random images, 4 random boxes each, no pretrained weights, 21 classes)", "",
        *training_table(part["training"]), "", "### The plain course model in ONNX Runtime: fp32 vs int8", "",
        *onnx_table(part["onnx"], first["onnx_runs"]), "",
        "### Full-size IAO W8A8 detectors in ONNX Runtime: fp32 vs int8 latency", "",
        *full_size_table(part["full_size"], first["int8_runs"]), END])


def run_all(store: Path, results: Path, iao_checkpoint: Path, command: str, profile: BenchProfile = FULL) -> str:
    """Both comparisons; write their records, rewrite the RESULTS.md section and return it."""
    profile.prepare_data()
    shared = {**context("side_by_side", profile.course), "command": command, "threads": torch.get_num_threads(),
              "onnx_runs": profile.onnx_runs, "int8_runs": profile.int8_runs}
    parts = {"training": compare_training(profile), "onnx": compare_onnx(iao_checkpoint, profile),
             "full_size": full_size_int8(profile)}
    write_records([{**shared, "part": name, **r} for name, rows in parts.items() for r in rows], store)
    return regenerate(table, store, results, (START, END))


def main() -> None:
    """Parse arguments, run, write RESULTS.md."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iao", type=Path, help="IAO W8A8 checkpoint for the int8 row (default: the course stage "
                                                 "of benchmarks/quantization.py --rows iao-w8a8 --iters 500)")
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument("--only", choices=["summary"], help="regenerate the RESULTS.md section from the records")
    args = parser.parse_args()
    store = HERE / "side_by_side.jsonl"
    if args.only:
        print(regenerate(table, store, args.out, (START, END)))
        return
    iao = args.iao.resolve() if args.iao else None
    profile = at_root(FULL)
    iao = iao or Path(row_recipe("plain", "iao-w8a8", baseline("plain"), profile.qat_iters).OUTPUT_DIR) / "model_final.pt"
    if not iao.is_file():
        parser.error(f"{iao} does not exist; run python benchmarks/quantization.py --rows iao-w8a8 --iters 500 first")
    print(run_all(store, args.out, iao, "python " + " ".join(sys.argv), profile))


if __name__ == "__main__":
    main()
