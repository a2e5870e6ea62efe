"""int8 graphs of the plain course baseline in ONNX Runtime, side by side: ssdlab PTQ and QAT, onnxruntime's own PTQ.

    python benchmarks/int8_graph.py                      # full profile: writes int8_graph.jsonl and its RESULTS section
    python benchmarks/int8_graph.py --only summary       # the section again from the committed records

Every row starts from the committed float baseline (`ssdlab/checkpoints/plain_shapes.pt`):
- fp32: its BN-fused float graph (`export --format onnx`), the reference of every ratio;
- ssdlab PTQ (`quantize --ptq 256`) and QAT (the course's QAT stage, QAT_ITERS iterations) as
  int8 QDQ graphs, with the heads left float (QUANTIZATION.FINAL False), quantized, and with the
  input layer quantized too (course_plain_int8.cfg);
- onnxruntime `quantize_static` of the fp32 graph (QDQ, per-channel int8 weights, uint8
  activations, MinMax calibration on the same 256 training images);
- OpenVINO (when openvino and nncf are installed: `pip install 'ssdlab[peers]'`): the fp32 graph run in
  f32 and in OpenVINO's default precision for this CPU, and NNCF's int8 PTQ of it (same images);
- pruned: notebook 02's sparse training with `PRUNE.SR_WEIGHT macs`, pruned at each --percents
  ratio (kept widths rounded up to 8) as fp32, fine-tuned --tune iterations (the sparse model
  teaching), then ssdlab PTQ with the heads int8 and of every conv; Torch-Pruning (when
  installed) of the same sparse model at the same ratio, ranked by |γ| across layers and by its
  default (filter L2 norm, per layer), and NNCF int8 of the fine-tuned graph in OpenVINO.
The rows are timed interleaved (`ssdlab.engine.profile.compare_sessions`) at batch 1 on one
thread and on every core, and evaluated on the val split through ONNX Runtime. One JSON record per
row goes to benchmarks/int8_graph.jsonl (commit, machine and CPU flags, weights digest, metrics,
cost); the RESULTS.md section between the int8-graph markers is generated from those records.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

from ssdlab.course import (QAT_ITERS, baseline, course_config, prepare_data, prune_stage, ptq_config, quant_config,
                           sparse_config, train_recipe, tune_config)
from ssdlab.data.catalog import build_dataset, datasets
from ssdlab.data.transforms import build_transforms
from ssdlab.engine import checkpoint as ckpt
from ssdlab.engine.inference import evaluate_model
from ssdlab.engine.profile import compare_sessions, summary
from ssdlab.export.onnx import write_onnx
from ssdlab.export.qdq import OnnxDetector
from ssdlab.export.runtime import optimized_ops, onnx_session
from ssdlab.quant.ptq import DEFAULT_IMAGES, calibration_batches, post_training_quantize

sys.path.insert(0, str(Path(__file__).resolve().parent))
import openvino_rows  # noqa: E402
from openvino_rows import OpenVinoGraph, OpenVinoSession, nncf_int8  # noqa: E402
from records import context, regenerate, write_records  # noqa: E402
from results_md import display  # noqa: E402

HERE = Path(__file__).resolve().parent
RECORDS = HERE / "int8_graph.jsonl"
START, END = "<!-- int8-graph:start -->", "<!-- int8-graph:end -->"
ROUND_TO = 8  # the pruned rows' kept widths: multiples of 8 run about 15% faster in ONNX Runtime than odd widths
Source = Path | torch.nn.Module | None  # a row's model: its ssdlab checkpoint, Torch-Pruning's model, or None
Graph = Path | OpenVinoGraph  # a row's graph: an ONNX file for ONNX Runtime, or one for OpenVINO
VARIANTS = {  # row suffix: QUANTIZATION.FINAL and backbone cfg
    "heads float": ("False", "course_plain_quan.cfg"),
    "heads int8": ("True", "course_plain_quan.cfg"),
    "every conv int8": ("True", "course_plain_int8.cfg"),
}
PRUNED_VARIANTS = ("heads int8", "every conv int8")  # the pruned rows' PTQ: the two fastest dense variants


def variant_overrides(variant: str) -> list[str]:
    """QUANTIZATION.FINAL and MODEL.BACKBONE.CFG of a VARIANTS row."""
    final, cfg = VARIANTS[variant]
    return ["QUANTIZATION.FINAL", final, "MODEL.BACKBONE.CFG", cfg]


def ptq_checkpoint(variant: str, profile: str, images: int) -> Path:
    """ssdlab PTQ of the baseline (the course's PTQ stage, notebook 05's for heads float and every conv int8)."""
    return post_training_quantize(ptq_config(images, profile, extra=variant_overrides(variant)), images).checkpoint


def qat_checkpoint(variant: str, profile: str) -> Path:
    """ssdlab QAT of the baseline: the course's QAT stage (notebook 05's run for heads float)."""
    extra = [] if variant == "heads float" else variant_overrides(variant)
    stage = None if variant == "heads float" else "plain_quant_iao_w8a8_" + variant.replace(" ", "_")
    return train_recipe(quant_config("IAO", 8, 8, QAT_ITERS[profile], profile, extra=extra, stage=stage)).checkpoint


class Calibration:
    """onnxruntime's CalibrationDataReader over preprocessed training images."""

    def __init__(self, batches):
        self.inputs = iter([{"images": image[None].numpy()} for batch in batches for image in batch])

    def get_next(self) -> dict | None:
        """The next calibration input, None at the end."""
        return next(self.inputs, None)


def calibration(cfg, images: int) -> list[torch.Tensor]:
    """The calibration batches of the peers' PTQ rows: `images` training images in ssdlab PTQ's seeded order."""
    train = build_dataset(cfg.DATASETS.TRAIN, False, transform=build_transforms(cfg, False))
    return list(calibration_batches(train, images, 16, cfg.SOLVER.SEED))


def ort_static(fp32: Path, out: Path, batches: list[torch.Tensor]) -> Path:
    """onnxruntime quantize_static of the fp32 graph: QDQ, per-channel int8 weights, uint8 activations, MinMax."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared, path = out / "fp32_prepared.onnx", out / "ort_static.onnx"
    quant_pre_process(str(fp32), str(prepared))
    quantize_static(str(prepared), str(path), Calibration(batches),
                    quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8)
    return path


def fused_convs(graph: Graph) -> dict:
    """Convs in the graph the runtime executes: how many run in int8 (ONNX Runtime: QLinearConv), how many not."""
    if isinstance(graph, OpenVinoGraph):
        return graph.conv_precisions()
    ops = optimized_ops(graph)
    return {"qlinearconv": ops.count("QLinearConv"), "float_conv": ops.count("Conv") + ops.count("FusedConv")}


def sparse_checkpoint(profile: str) -> Path:
    """Notebook 02's sparse training of the baseline with the L1 weighted by the MACs a channel carries."""
    return train_recipe(sparse_config("plain", profile, extra=["PRUNE.SR_WEIGHT", "macs"],
                                      stage="plain_sparse_macs")).checkpoint


def pruned_rows(out: Path, profile: str, images: int, percents: tuple[float, ...], tune: int,
                batches: list[torch.Tensor]) -> dict[str, tuple[Graph, Source]]:
    """At each percent: ssdlab's prune (widths rounded up to 8), fine-tuned for `tune` iterations with the sparse model
    as teacher, then ssdlab PTQ (PRUNED_VARIANTS) and NNCF int8; Torch-Pruning of the same sparse model at that ratio."""
    sparse = sparse_checkpoint(profile)
    rows: dict[str, tuple[Graph, Source]] = {}
    for percent in percents:
        name = f"pruned p{percent:g}"
        pruned = Path(prune_stage(sparse, course_config("plain", profile), percent, quick=True,
                                  round_to=ROUND_TO).files["checkpoint"])
        fp32 = write_onnx(ckpt.load(pruned), out, f"pruned_{percent:g}")
        rows[f"{name}, fp32"] = (fp32, pruned)
        if tune:
            pruned = train_recipe(tune_config(pruned, tune, profile, teacher=sparse)).checkpoint
            name = f"{name} + {tune} it"
            fp32 = write_onnx(ckpt.load(pruned), out, f"tuned_{percent:g}")
            rows[f"{name}, fp32"] = (fp32, pruned)
        for variant in PRUNED_VARIANTS:
            quantized = post_training_quantize(ptq_config(images, profile, start=pruned,
                                                          extra=variant_overrides(variant)), images).checkpoint
            rows[f"{name} + ssdlab PTQ, {variant}"] = (
                write_onnx(ckpt.load(quantized), out, f"pruned_ptq_{percent:g}_{len(rows)}"), quantized)
        if openvino_rows.versions():
            rows[f"{name} + NNCF int8 in OpenVINO"] = (nncf_int8(fp32, out, batches), pruned)
        rows.update(torch_pruning_rows(out, sparse, percent))
    return rows


def torch_pruning_rows(out: Path, sparse: Path, percent: float) -> dict[str, tuple[Path, torch.nn.Module]]:
    """Torch-Pruning of the sparse model at a ratio, no fine-tune: |γ| ranked across layers (network slimming), and
    its default (L2 norm of the filters, the same ratio in every layer); the head convs keep their outputs."""
    try:
        import torch_pruning as tp
    except ImportError:
        print("torch-pruning is not installed (pip install torch-pruning): its rows are left out")
        return {}
    rows = {}
    for label, importance, global_ in (("|γ| across layers", tp.importance.BNScaleImportance(), True),
                                       ("defaults (L2, per layer)", tp.importance.MagnitudeImportance(p=2), False)):
        net = ckpt.load(sparse).eval()
        heads = [m for m in net.box_head.modules() if isinstance(m, torch.nn.Conv2d)]
        size = net.cfg.INPUT.IMAGE_SIZE
        tp.pruner.MetaPruner(net, torch.randn(1, 3, size, size), importance=importance, pruning_ratio=percent,
                             global_pruning=global_, ignored_layers=heads,
                             forward_fn=lambda model, x: model.forward_raw(x)).step()
        name = f"Torch-Pruning {tp.__version__} p{percent:g}, {label}"
        rows[name] = (write_onnx(net, out, f"tp_{percent:g}_{int(global_)}"), net)
    return rows


def openvino_contenders(fp32: Path, start: Path, out: Path,
                        batches: list[torch.Tensor]) -> dict[str, tuple[Graph, Source]]:
    """The fp32 graph in OpenVINO (f32, and the precision OpenVINO picks for this CPU) and NNCF's int8 of it; none
    when openvino or nncf is missing."""
    versions = openvino_rows.versions()
    if versions is None:
        print("openvino or nncf is not installed (pip install 'ssdlab[peers]'): the OpenVINO rows are left out")
        return {}
    default = OpenVinoGraph(fp32, "default")
    return {f"OpenVINO {versions['openvino']} fp32": (OpenVinoGraph(fp32), start),
            f"OpenVINO {versions['openvino']}, its default precision here ({default.precision_used()})": (default, start),
            f"NNCF {versions['nncf']} int8 in OpenVINO": (nncf_int8(fp32, out, batches), None)}


def contenders(out: Path, profile: str, images: int, qat: bool, percents: tuple[float, ...],
               tune: int) -> dict[str, tuple[Graph, Source]]:
    """Row name -> (graph, its Source: None for the peers' PTQ of the baseline's fp32 graph)."""
    start = baseline("plain")
    fp32 = write_onnx(ckpt.load(start), out, "fp32")
    rows: dict[str, tuple[Graph, Source]] = {"fp32": (fp32, start)}
    for variant in VARIANTS:
        point = ptq_checkpoint(variant, profile, images)
        rows[f"ssdlab PTQ, {variant}"] = (write_onnx(ckpt.load(point), out, f"ptq_{len(rows)}"), point)
    batches = calibration(course_config("plain", profile), images)  # the peers' PTQ rows all calibrate on these
    rows["onnxruntime quantize_static"] = (ort_static(fp32, out, batches), None)
    rows.update(openvino_contenders(fp32, start, out, batches))
    for variant in VARIANTS if qat else ():
        point = qat_checkpoint(variant, profile)
        rows[f"ssdlab QAT, {variant}"] = (write_onnx(ckpt.load(point), out, f"qat_{len(rows)}"), point)
    return {**rows, **pruned_rows(out, profile, images, percents, tune, batches)}


def detector_model(source: Source, reference):
    """A row's model for decoding and counting (the peers' PTQ rows: the float baseline they quantized)."""
    if isinstance(source, Path):
        return ckpt.load(source)
    return reference if source is None else source


def open_session(graph: Graph, threads: int):
    """An ONNX Runtime session, or an OpenVINO one with the same run(None, feeds)."""
    return OpenVinoSession(graph, threads) if isinstance(graph, OpenVinoGraph) else onnx_session(graph, threads)


def file_mib(graph: Graph) -> float:
    """The graph's size on disk."""
    return graph.files_mib() if isinstance(graph, OpenVinoGraph) else graph.stat().st_size / 2 ** 20


def measure(rows: dict[str, tuple[Graph, Source]], profile: str, runs: int) -> list[dict]:
    """One record per row: latency at 1 thread and every core (interleaved), mAP through ONNX Runtime, graph counts."""
    cfg = course_config("plain", profile)
    val, size, reference = datasets(cfg, False), cfg.INPUT.IMAGE_SIZE, ckpt.load(baseline("plain"))
    timings = compare_sessions({name: path for name, (path, _) in rows.items()}, open_session, size, runs)
    common = {**context("int8_graph", profile), "start": display(baseline("plain"))}
    records = []
    for name, (path, source) in rows.items():
        point = source if isinstance(source, Path) else None
        model = detector_model(source, reference)
        detector = OnnxDetector(None, model, session=open_session(path, torch.get_num_threads()))
        metrics = evaluate_model(detector, val, cfg)
        state = ckpt.read_checkpoint(point) if point else None
        totals = summary(model, size)
        records.append({**common, "row": name, "checkpoint": display(point) if point else None,
                        "weights_digest": ckpt.weights_digest(state) if state else None,
                        "metrics": {"voc_map": metrics["voc_map"], "coco_ap": metrics["coco_ap"]},
                        "cost": {"params": totals["params"], "macs": totals["macs"],
                                 "file_mib": file_mib(path), **fused_convs(path),
                                 "latency": {str(t): timing[name] for t, timing in timings.items()}}})
    return records


def ratio_cells(record: dict, fp32: dict) -> str:
    """'median ms (ratio to fp32)' per thread count."""
    latency, reference = record["cost"]["latency"], fp32["cost"]["latency"]
    return " | ".join(f"{latency[t]['median_ms']:.2f} ({latency[t]['median_ms'] / reference[t]['median_ms']:.2f})"
                      for t in latency)


GOALS = (  # issue 26: (the rows a goal is about, predicate on the row name, largest ratio at 1 thread, largest loss)
    ("dense ssdlab int8", lambda row: row.startswith(("ssdlab PTQ", "ssdlab QAT")), 0.55, 0.3),
    ("pruned fp32 (≤ 500 fine-tune iterations)", lambda row: row.startswith("pruned") and row.endswith(", fp32"),
     0.6, 1.0),
    ("pruned + ssdlab int8", lambda row: row.startswith("pruned") and "ssdlab PTQ" in row, 0.35, 1.5),
)


def ratio(record: dict, fp32: dict, threads: str = "1") -> float:
    """A row's median latency over fp32's at a thread count."""
    return record["cost"]["latency"][threads]["median_ms"] / fp32["cost"]["latency"][threads]["median_ms"]


def loss_pt(record: dict, fp32: dict) -> float:
    """The mAP points a row loses against fp32."""
    return (fp32["metrics"]["voc_map"] - record["metrics"]["voc_map"]) * 100


def goal_lines(records: list[dict], fp32: dict) -> list[str]:
    """Issue 26's goals against the records: per goal the fastest row within its mAP loss, and whether it is fast
    enough; FINAL True (heads int8) against FINAL False (heads float)."""
    lines = []
    for what, wanted, most, pt in GOALS:
        kept = [r for r in records if wanted(r["row"]) and loss_pt(r, fp32) <= pt]
        if not kept:
            lines.append(f"- {what} ≤ {most:g} at ≤ {pt:g} pt: not met, no such row within {pt:g} pt")
            continue
        best = min(kept, key=lambda r: ratio(r, fp32))
        verdict = "met" if ratio(best, fp32) <= most else "not met"
        lines.append(f"- {what} ≤ {most:g} at ≤ {pt:g} pt: {verdict}, fastest within {pt:g} pt: {best['row']}, "
                     f"{ratio(best, fp32):.3f} at {-loss_pt(best, fp32):+.2f} pt")
    by_row = {r["row"]: r for r in records}
    for method in ("ssdlab PTQ", "ssdlab QAT"):
        final, plain = by_row.get(f"{method}, heads int8"), by_row.get(f"{method}, heads float")
        if final and plain:
            faster = all(ratio(final, plain, t) <= 1 for t in final["cost"]["latency"])
            cells = ", ".join(f"{ratio(final, plain, t):.2f} at {t} thread{'s' if t != '1' else ''}"
                              for t in final["cost"]["latency"])
            lines.append(f"- FINAL True no slower than FINAL False ({method}): {'met' if faster else 'not met'}, "
                         f"heads int8 / heads float {cells}")
    return lines


def table(records: list[dict]) -> str:
    """The RESULTS.md section, generated from the records alone."""
    fp32 = next(r for r in records if r["row"] == "fp32")
    threads = list(fp32["cost"]["latency"])
    first = fp32["cost"]["latency"][threads[0]]
    lines = [START, "## int8 graphs in ONNX Runtime: ssdlab PTQ and QAT against onnxruntime's PTQ and NNCF in OpenVINO", "",
             f"Generated by `python benchmarks/int8_graph.py --only summary` from `benchmarks/int8_graph.jsonl` "
             f"(commit {fp32['commit']}, {fp32['date']}, profile {fp32['profile']}). Machine: {fp32['machine']}; "
             f"CPU flags: {fp32['cpu_flags']}. Start: `{fp32['start']}`. Batch 1, median of {first['runs']} "
             "interleaved runs; in brackets the ratio to fp32 at the same thread count.", "",
             "| row | params | MMACs | int8 / float convs | file MiB | " + " | ".join(
                 f"ms, {t} thread{'s' if t != '1' else ''} (ratio)" for t in threads) + " | VOC mAP@0.5 | Δ mAP (pt) |",
             "|---|---|---|---|---|" + "---|" * len(threads) + "---|---|"]
    for r in records:
        cost, delta = r["cost"], (r["metrics"]["voc_map"] - fp32["metrics"]["voc_map"]) * 100
        name = r["row"].replace("|", "\\|")  # a pipe in a row name would split the cell
        lines.append(f"| {name} | {cost['params']:,} | {cost['macs'] / 1e6:.1f} | {cost['qlinearconv']} / "
                     f"{cost['float_conv']} | {cost['file_mib']:.2f} | {ratio_cells(r, fp32)} | "
                     f"{r['metrics']['voc_map']:.4f} | {delta:+.2f} |")
    goals = ["", "Issue 26's goals, from these rows (ratio to fp32 at 1 thread, exact; loss against fp32's mAP):", "",
             *goal_lines(records, fp32)]
    return "\n".join(lines + goals + ["", NOTE, END])


NOTE = (
    "heads float: QUANTIZATION.FINAL False (the course default): the 12 head convs stay float and the last backbone "
    "conv, read only by heads, is not fused. heads int8: FINAL True, the heads quantize their outputs too. every conv "
    "int8: course_plain_int8.cfg also quantizes the input layer. onnxruntime quantize_static quantizes every conv of "
    "the fp32 graph from its own calibration (no training). int8 / float convs: in the graph the runtime executes "
    "(ONNX Runtime: QLinearConv; OpenVINO: convolutions run in u8/i8). OpenVINO rows time the same fp32 graph in "
    "OpenVINO, asking for f32 and in the precision OpenVINO picks for this CPU (bfloat16 where the CPU has "
    "AVX512_BF16 or AMX); NNCF int8: nncf.quantize of the fp32 graph (default preset) from the same 256 "
    "calibration images, run in OpenVINO; every ratio is to ONNX Runtime fp32. pruned: the baseline sparse-trained with the L1 "
    "weighted by the MACs a channel carries (`PRUNE.SR_WEIGHT macs`, notebook 02's recipe otherwise), pruned at "
    "that percent (kept widths rounded up to 8; compensated, no fine-tune), then fine-tuned (`+ N it`, LR 0.0005, "
    "the sparse model as teacher). Torch-Pruning: the same sparse model pruned at the same ratio by Torch-Pruning's "
    "MetaPruner (head convs keep their outputs; no compensation, no fine-tune). Each ssdlab row's weights are its "
    "checkpoint's (weights digest in the record).")


def main() -> None:
    """Measure (or, with --only summary, only regenerate the section from the records)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="full", choices=["full", "smoke"])
    parser.add_argument("--only", choices=["summary"], help="regenerate the RESULTS.md section from the records")
    parser.add_argument("--images", type=int, default=DEFAULT_IMAGES, help="calibration images of every PTQ row")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--no-qat", action="store_true", help="leave out the QAT rows (they train)")
    parser.add_argument("--percents", type=float, nargs="*", default=[0.3, 0.35, 0.4, 0.5],
                        help="prune ratios of the pruned rows (none: leave them out)")
    parser.add_argument("--tune", type=int, default=500, help="fine-tune iterations of the pruned rows (0: none)")
    parser.add_argument("--records", type=Path, default=RECORDS)
    parser.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    args = parser.parse_args()
    if args.only != "summary":
        prepare_data(args.profile)
        with tempfile.TemporaryDirectory() as folder:
            rows = contenders(Path(folder), args.profile, args.images, not args.no_qat, tuple(args.percents),
                              args.tune)
            records = measure(rows, args.profile, args.runs)
        write_records(records, args.records)
    print(regenerate(table, args.records, args.results, (START, END), before=("\n<!-- side-by-side:start -->",)))


if __name__ == "__main__":
    main()
