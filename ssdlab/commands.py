"""The CLI commands: each turns parsed arguments into library calls and prints the result."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from ssdlab.config import CfgNode, load_config, merge_overrides
from ssdlab.engine import checkpoint as ckpt
from ssdlab.engine import distributed as dist
from ssdlab.errors import STOPPED, CheckpointError, ConfigError
from ssdlab.files import check_writable

if TYPE_CHECKING:
    from ssdlab.engine.train import TrainResult


def _opts(args: argparse.Namespace) -> list[str]:
    """Trailing KEY VALUE overrides (argparse may keep a leading '--')."""
    return [o for o in (args.opts or []) if o != "--"]


def cmd_data(args: argparse.Namespace) -> None:
    """Generate the shapes dataset."""
    from ssdlab.data.shapes import generate_shapes

    out = generate_shapes(args.out, n_train=args.train, n_val=args.val, seed=args.seed)
    print(f"shapes dataset ready in {out} ({args.train} train, {args.val} val images)")


def cmd_train(args: argparse.Namespace) -> int:
    """Train a recipe (resuming unless --fresh); under torchrun every process runs this."""
    from ssdlab.engine.train import train

    return _report(train(load_config(args.config_file, _opts(args)), resume=not args.fresh), "training")


def _report(result: TrainResult, label: str) -> int:
    """Print where a run stopped and its metrics (rank 0); the exit status."""
    if dist.is_main():
        print(f"{label} {_run_state(result)} at iteration {result.iteration}: {result.checkpoint}")
        _print_metrics(result.metrics)
    dist.cleanup()
    return 0 if result.finished else STOPPED


def _run_state(result: TrainResult) -> str:
    """How a training run ended, in words."""
    if result.reused:
        return "had already finished (reused as it is; --fresh trains it again)"
    return "finished" if result.finished else "stopped (run the same command to resume)"


def _print_metrics(metrics: dict) -> None:
    """One line per metric family."""
    if metrics:
        print(f"{metrics['voc_metric']}: {metrics['voc_map']:.4f}")
        print("COCO " + "  ".join(f"{k} {v:.4f}" for k, v in metrics["coco"].items()))


def checkpoint_and_config(args: argparse.Namespace) -> tuple[Path, dict, CfgNode]:
    """The checkpoint to use and the config to run it with (recipe + overrides, or the stored one)."""
    path = Path(args.ckpt) if getattr(args, "ckpt", None) else None
    if path is None:
        if not args.config_file:
            raise ConfigError("give --ckpt, or --config-file whose OUTPUT_DIR holds last_checkpoint")
        cfg = load_config(args.config_file, _opts(args))
        path = ckpt.last_checkpoint(cfg.OUTPUT_DIR)
        if path is None:
            raise CheckpointError(f"no checkpoint in {cfg.OUTPUT_DIR} (no last_checkpoint file); "
                                  "train first or pass --ckpt")
    state = ckpt.read_checkpoint(path)
    cfg = ckpt.checkpoint_config(state, str(path)).clone()
    if args.config_file:
        recipe = load_config(args.config_file, freeze=False)
        for section in ("DATASETS", "TEST", "DATA_LOADER"):
            cfg[section] = recipe[section]
    merge_overrides(cfg, _opts(args))
    return path, state, cfg.freeze()


def model_for_testing(state: dict, path: Path, cfg: CfgNode):
    """The checkpoint's model detecting with cfg.TEST (NMS, thresholds), fused when TEST.BN_FUSE is true."""
    model = ckpt.model_from_checkpoint(state, str(path))
    settings = model.cfg.clone()
    settings.TEST = cfg.TEST.clone()
    model.cfg = settings.freeze()
    if not cfg.TEST.BN_FUSE:
        return model
    from ssdlab.export.fuse import fuse_model

    return fuse_model(model)


def check_output_file(path: Path | None, option: str) -> None:
    """ConfigError, before any work, when an output file cannot be written where asked."""
    if path is None:
        return
    if path.is_dir():
        raise ConfigError(f"{option} {path} is a folder; give a file name, e.g. {path / 'detections.json'}")
    if not path.parent.is_dir():
        raise ConfigError(f"{option} {path}: the folder {path.parent} does not exist; create it first")
    check_writable(path.parent, f"{option} {path}", ConfigError)


def cmd_eval(args: argparse.Namespace) -> None:
    """Evaluate a checkpoint on DATASETS.TEST (VOC and COCO metrics)."""
    from ssdlab.data.catalog import datasets
    from ssdlab.engine.diagnose import diagnose, format_diagnosis
    from ssdlab.engine.evaluate import format_ap_table
    from ssdlab.engine.inference import check_classes, predict, score

    check_output_file(args.detections, "--detections")
    path, state, cfg = checkpoint_and_config(args)
    device = dist.local_device(cfg.MODEL.DEVICE)
    dist.init_distributed(device)
    model = model_for_testing(state, path, cfg).to(device)
    if args.integer:
        _eval_integer(model, cfg)
    else:
        dataset = datasets(cfg, is_train=False)
        check_classes(model, dataset, f"checkpoint {path}")
        predictions = predict(model, dataset, cfg, device)  # every rank's share, gathered on every rank
        if dist.is_main():
            result = score(dataset, predictions, cfg, coco_json=args.detections)
            print(format_ap_table(result["voc"]))
            print(result["coco"]["summary"])
            _print_metrics({"voc_map": result["voc_map"], "voc_metric": result["voc"]["metric"],
                            "coco": {k: result["coco"][k] for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")}})
            if args.errors:
                print(format_diagnosis(diagnose(dataset, predictions, args.score_threshold)))
    dist.cleanup()


def _eval_integer(model, cfg: CfgNode) -> None:
    """The integer-only reference next to the fake-quantized model: mAP and detection agreement."""
    from ssdlab.data.catalog import datasets
    from ssdlab.export.intref import IntegerReference, compare_integer

    reference = IntegerReference(model.cpu())  # refuses a model without integer arithmetic before any data is read
    result = compare_integer(model, datasets(cfg, is_train=False), cfg, reference)
    agree = result["agreement"]
    print(f"fake-quantized model:    VOC mAP@0.5 {result['fake_quant']['voc_map']:.4f}  "
          f"COCO AP {result['fake_quant']['coco_ap']:.4f}")
    print(f"integer-only reference:  VOC mAP@0.5 {result['integer']['voc_map']:.4f}  "
          f"COCO AP {result['integer']['coco_ap']:.4f}  ({100 * result['integer_share']:.1f}% of MACs in integer)")
    print(f"agreement: {agree['agreed']} of {agree['total']} detections ({100 * agree['fraction']:.2f}%) "
          "with the same label and box IoU >= 0.99")


def cmd_demo(args: argparse.Namespace) -> None:
    """Draw detections on every image of a folder; print objects, ms and FPS per image."""
    from ssdlab.viz.demo import run_demo

    path, state, cfg = checkpoint_and_config(args)
    model = model_for_testing(state, path, cfg)
    for row in run_demo(model, cfg, args.images, args.out, args.score_threshold):
        noun = "object" if row["objects"] == 1 else "objects"
        print(f"{row['image']}: {row['objects']} {noun}, {row['ms']:.1f} ms ({row['fps']:.1f} FPS) "
              f"-> {row['out']}")


def cmd_info(args: argparse.Namespace) -> None:
    """Print the layer table and totals of a recipe's model or a checkpoint's."""
    from ssdlab.engine.profile import cpu_flags, layer_table, summary
    from ssdlab.model.build import build_model

    if args.ckpt:
        model = ckpt.load(args.ckpt)
        cfg = model.cfg
    else:
        cfg = load_config(args.config_file, _opts(args))
        model = build_model(cfg, imagenet=False)  # no ImageNet weights needed to describe the model
    size = cfg.INPUT.IMAGE_SIZE
    rows = layer_table(model.eval(), size, latency=args.latency)
    print(f"{'idx':>4} {'type':<16} {'output':<18} {'params':>10} {'MACs':>14}" + (f" {'ms':>8}" if args.latency else ""))
    for row in rows:
        shape = "x".join(str(d) for d in row["shape"]) if row["shape"] else "-"
        print(f"{row['index']:>4} {row['type']:<16} {shape:<18} {row['params']:>10,} {row['macs']:>14,}"
              + (f" {row['ms']:>8.3f}" if args.latency else ""))
    if args.latency:
        import torch

        print(f"ms: each layer's median over 30 batch-1 forwards, PyTorch eager mode, {torch.get_num_threads()} "
              f"threads, CPU flags: {cpu_flags()}")
    totals = summary(model, size)
    print(f"params {totals['params']:,} ({totals['params'] / 2 ** 20:.2f} M = params/2^20)  "
          f"MACs {totals['macs'] / 1e6:.1f} M  size {totals['size_mib']:.2f} MiB  "
          f"priors {totals['priors']}  input {size}x{size}")
    print(json.dumps({"params": totals["params"], "macs": totals["macs"], "size_mib": round(totals["size_mib"], 4),
                      "priors": totals["priors"]}))


def prune_mode(args: argparse.Namespace, stored: CfgNode) -> str:
    """--mode, else PRUNE.TYPE of the recipe, else of the checkpoint; 'normal' when none is set."""
    if args.mode:
        return args.mode
    if args.config_file:
        recipe = load_config(args.config_file, _opts(args))
        if recipe.PRUNE.TYPE != "no":
            return recipe.PRUNE.TYPE
    return stored.PRUNE.TYPE if stored.PRUNE.TYPE != "no" else "normal"


def cmd_prune(args: argparse.Namespace) -> None:
    """Prune a checkpoint: write the compact model, its cfg and the report; print the report."""
    from ssdlab.api import prune_channels

    path, state, cfg = checkpoint_and_config(args)
    report = prune_channels(path, args.percent, prune_mode(args, cfg), cfg, bool(args.regular), bool(args.max),
                            bool(args.quick), args.out, args.tag, macs=args.macs)
    print(report.text, end="")
    for kind, file in report.files.items():
        print(f"{kind}: {file}")


def cmd_quantize(args: argparse.Namespace) -> int:
    """QAT: `train` starting from --ckpt with the recipe's QUANTIZATION.* (and the overrides); --ptq: calibration only
    (into <OUTPUT_DIR>_ptq<N> unless OUTPUT_DIR is given)."""
    from ssdlab.api import quantize

    result = quantize(args.config_file, args.ckpt, _opts(args), args.ptq, args.fresh)
    if args.ptq is None:
        return _report(result, "quantization-aware training")
    state = "reused (--fresh calibrates again)" if result.reused else f"done in {result.train_seconds:.1f} s"
    used = result.calibrated_on or args.ptq
    fewer = "" if used == args.ptq else f" (--ptq {args.ptq}, but the training set has only {used})"
    print(f"post-training quantization on {used} calibration images{fewer} {state}: {result.checkpoint}")
    _print_metrics(result.metrics)
    return 0


def cmd_export(args: argparse.Namespace) -> None:
    """Export a checkpoint's fused weights (or ONNX) into a new folder."""
    from ssdlab.api import export_model
    from ssdlab.export.weights import exported_files

    out = export_model(args.ckpt, args.out, args.format, args.name, args.force, args.int8)
    for path in exported_files(out):
        print(f"{path}  ({path.stat().st_size:,} bytes)")


def cmd_tour(args: argparse.Namespace) -> None:
    """The course headless: data, training, evaluation, demo, summary."""
    from ssdlab.course import run_tour

    print(run_tour())
