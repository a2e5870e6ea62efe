"""`python -m ssdlab COMMAND`: data, train, eval, demo, info, prune, quantize, export, tour (the original SSD code's flags)."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from ssdlab.data.shapes import TRAIN_IMAGES
from ssdlab.errors import STOPPED, SSDLabError


def _config_args(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """--config-file and trailing KEY VALUE overrides, as in the original SSD code."""
    parser.add_argument("--config-file", required=required, metavar="FILE", help="YAML recipe")
    parser.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE",
                        help="config overrides, e.g. SOLVER.MAX_ITER 1000")


def score(text: str) -> float:
    """A --score-threshold: a number from 0 to 1 (argparse turns the error into a usage line)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; give a score between 0 and 1") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is outside 0..1; detection scores are probabilities")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(prog="python -m ssdlab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="generate the built-in synthetic dataset")
    data.add_argument("kind", choices=["shapes"])
    data.add_argument("--out", required=True, type=Path, help="folder to write")
    data.add_argument("--train", type=int, default=TRAIN_IMAGES, help="training images")
    data.add_argument("--val", type=int, default=500, help="validation images")
    data.add_argument("--seed", type=int, default=0)

    train = sub.add_parser("train", help="train (resumes from OUTPUT_DIR/last_checkpoint)")
    train.add_argument("--fresh", action="store_true", help="ignore OUTPUT_DIR/last_checkpoint")
    _config_args(train)

    evaluate = sub.add_parser("eval", help="VOC mAP and COCO AP of a checkpoint on DATASETS.TEST")
    evaluate.add_argument("--ckpt", help="checkpoint (default: OUTPUT_DIR/last_checkpoint)")
    evaluate.add_argument("--integer", action="store_true",
                          help="IAO models: also run the integer-only reference and report its agreement")
    evaluate.add_argument("--errors", action="store_true",
                          help="also say what became of each object by size, and what each confident detection was")
    evaluate.add_argument("--score-threshold", type=score, default=0.3, help="confident detections for --errors")
    evaluate.add_argument("--detections", type=Path, metavar="FILE",
                          help="also write the detections to FILE as COCO results JSON, and the ground truth they "
                               "were scored against to FILE's name with .gt.json (ids: a COCO set's own; other sets: "
                               "image_id = the image's position in DATASETS.TEST, category_id = the class index)")
    _config_args(evaluate, required=False)

    demo = sub.add_parser("demo", help="draw detections on images and time them")
    demo.add_argument("--ckpt", required=True)
    demo.add_argument("--images", required=True, type=Path, help="folder of .jpg/.png images")
    demo.add_argument("--out", required=True, type=Path, help="folder for the drawn images")
    demo.add_argument("--score-threshold", type=score, default=0.4, help="draw detections scoring at least this")
    _config_args(demo, required=False)

    info = sub.add_parser("info", help="layer table, params, MACs, size and priors of a model")
    info.add_argument("--ckpt", help="describe this checkpoint instead of a fresh model")
    info.add_argument("--latency", action="store_true", help="also time each layer on this machine (ms, batch 1)")
    _config_args(info, required=False)

    prune = sub.add_parser("prune", help="prune a sparse-trained checkpoint: compact .pt, .cfg and a .txt report")
    prune.add_argument("--ckpt", required=True, help="the (sparse-trained) checkpoint to prune")
    amount = prune.add_mutually_exclusive_group(required=True)
    amount.add_argument("--percent", type=float, help="fraction of the prunable channels to remove")
    amount.add_argument("--macs", type=float, help="instead of --percent: the smallest percent whose compact model "
                                                   "keeps at most this share of the MACs (e.g. 0.5)")
    prune.add_argument("--regular", type=int, choices=[0, 1], default=0,
                       help="1: round kept channels up to a multiple of PRUNE.ROUND_TO (default 8)")
    prune.add_argument("--max", type=int, choices=[0, 1], default=0,
                       help="1: drop the head levels after the first layer left without channels")
    prune.add_argument("--quick", type=int, choices=[0, 1], default=0,
                       help="1: evaluate only the original and the compact model")
    prune.add_argument("--mode", choices=["normal", "shortcut", "coupled"],
                       help="prunable groups (default: PRUNE.TYPE of the recipe or checkpoint; normal when 'no')")
    prune.add_argument("--out", type=Path, help="output folder (default: the checkpoint's folder)")
    prune.add_argument("--tag", help="output file stem (default: <ckpt>_<mode>_p<percent>[_regular][_max])")
    _config_args(prune, required=False)

    quantize = sub.add_parser("quantize", help="quantization-aware training (or --ptq: calibration only) from a "
                                               "float (or pruned) checkpoint")
    quantize.add_argument("--ckpt", required=True, help="the checkpoint to start from")
    quantize.add_argument("--fresh", action="store_true", help="ignore OUTPUT_DIR/last_checkpoint")
    quantize.add_argument("--ptq", type=int, nargs="?", const=256, metavar="IMAGES",
                          help="post-training quantization (IAO): observe the activation ranges on IMAGES training "
                               "images (default 256), no training; writes to <OUTPUT_DIR>_ptq<IMAGES>")
    _config_args(quantize)

    export = sub.add_parser("export", help="BN-fused weights for hardware (.bin + manifest, txt, npz) or ONNX")
    export.add_argument("--ckpt", required=True)
    export.add_argument("--format", default="bin", choices=["bin", "txt", "npz", "onnx"])
    export.add_argument("--out", required=True, type=Path, help="folder to create (refused if it exists)")
    export.add_argument("--name", default="model", help="file name stem inside the folder")
    export.add_argument("--int8", action="store_true", help="require integer weight codes (IAO models)")
    export.add_argument("--force", action="store_true", help="replace an existing --out folder")

    sub.add_parser("tour", help="the whole course headless on built-in data (SSDLAB_PROFILE=smoke: ~1 min)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; user errors print one clear line and exit with status 2."""
    args = build_parser().parse_args(argv)
    misplaced = [token for token in getattr(args, "opts", None) or [] if token.startswith("--") and token != "--"]
    if misplaced:  # everything after the first KEY is read as KEY VALUE pairs
        print(f"error: {misplaced[0]} comes after the KEY VALUE overrides; put options first, e.g. "
              f"python -m ssdlab {args.command} {misplaced[0]} ... --config-file FILE KEY VALUE", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        from ssdlab import commands

        return getattr(commands, f"cmd_{args.command}")(args) or 0
    except SSDLabError as err:
        print(f"error: {err.cli_message()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C while starting, a second one while training, or one while evaluating
        print(f"\ninterrupted (Ctrl-C): {args.command} stopped; files it finished writing are kept (training: the "
              "last checkpoint, and a finished run's weights before its final evaluation); run the same command "
              "to go on from them", file=sys.stderr)
        return STOPPED
    except BrokenPipeError:  # the output was piped into a reader that stopped early (`| head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 1


if __name__ == "__main__":
    sys.exit(main())
