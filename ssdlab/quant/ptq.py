"""Post-training quantization (PTQ): an IAO model of a float checkpoint, its ranges observed on calibration images.

No weight changes and no gradient step: the recipe's quantized layers (the cfg's quantization=1
marks, the heads under QUANTIZATION.FINAL) are swapped in, every activation observer sees
`images` training images (test-time transform, a seeded random choice) and the result is saved
like a finished QAT run, so `eval`, `export --format onnx` (the same int8 graph) and the course
read it alike. Compare with QAT in notebook 05:

    result = post_training_quantize(cfg, images=256)     # cfg: a QAT recipe from a float start
    result.metrics["voc_map"], result.checkpoint
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator

import torch

from ssdlab.config import CfgNode
from ssdlab.data.catalog import build_dataset, datasets
from ssdlab.data.transforms import build_transforms
from ssdlab.engine import checkpoint as ckpt
from ssdlab.engine.train import (TrainResult, architecture_config, check_same_recipe, check_start_classes,
                                 fine_tune_start, initial_model, run_metrics, start_digest)
from ssdlab.errors import CheckpointError, ConfigError, QuantError
from ssdlab.files import check_output_folder
from ssdlab.quant.apply import calibrate, quant_spec

DEFAULT_IMAGES = 256


def calibration_batches(dataset, images: int, batch: int, seed: int) -> Iterator[torch.Tensor]:
    """Batches of `images` images of a dataset in a seeded random order."""
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:images].tolist()
    for start in range(0, len(order), batch):
        yield torch.stack([dataset[i][0] for i in order[start:start + batch]])


def check_ptq_recipe(cfg: CfgNode, images: int) -> None:
    """QuantError / ConfigError before any work when a recipe cannot be calibrated."""
    spec = quant_spec(cfg)
    if spec is None or spec.kind != "IAO" or spec.abits >= 32:
        kind = "no quantization" if spec is None else f"{spec.kind} A{spec.abits}"
        raise QuantError(f"post-training quantization calibrates IAO activation ranges, but the recipe sets {kind}; "
                         "set QUANTIZATION.TYPE IAO (ABITS below 32), or drop --ptq to train DoReFa/BWN with QAT")
    if not cfg.MODEL.FINE_TUNE:
        raise ConfigError("post-training quantization needs a trained float start: MODEL.FINE_TUNE True "
                          "MODEL.WEIGHTS <checkpoint> (python -m ssdlab quantize --ptq --ckpt FILE ...)")
    if images < 1:
        raise ConfigError(f"{{--ptq}}{images}: calibrate on at least one image (256 is typical)")


def reused_run(final: Path, cfg: CfgNode, start: str | None, images: int) -> TrainResult | None:
    """The finished PTQ run in OUTPUT_DIR when it is this one (same recipe, start, image count); None if absent."""
    if not final.is_file():
        return None
    state = ckpt.read_checkpoint(final)
    check_same_recipe(state, cfg, final, start)
    if state.get("calibration_images") != images:
        raise CheckpointError(f"{final} was calibrated on {state.get('calibration_images')} images, not {images}; "
                              "choose another OUTPUT_DIR, or --fresh to calibrate it again")
    metrics = dict(state.get("metrics", {}))
    return TrainResult(final, 0, True, metrics, metrics.pop("train_seconds", 0.0), reused=True,
                       calibrated_on=state.get("calibrated_on"))


def post_training_quantize(cfg: CfgNode, images: int = DEFAULT_IMAGES, resume: bool = True) -> TrainResult:
    """Calibrate the recipe's IAO model of its MODEL.WEIGHTS start on `images` training images; evaluate; save."""
    check_ptq_recipe(cfg, images)
    output = Path(cfg.OUTPUT_DIR)
    check_output_folder(output, "OUTPUT_DIR", ConfigError)
    start_state = fine_tune_start(cfg)
    assert start_state is not None  # check_ptq_recipe required MODEL.FINE_TUNE
    cfg, start = architecture_config(cfg, start_state), start_digest(start_state)
    final = output / "model_final.pt"
    done = reused_run(final, cfg, start, images) if resume else None
    if done is not None:
        return done
    clock = time.perf_counter()
    train_set = build_dataset(cfg.DATASETS.TRAIN, False, transform=build_transforms(cfg, False),
                              skip_bad_images=cfg.DATASETS.SKIP_BAD_IMAGES)
    check_start_classes(start_state, train_set.class_names, cfg.MODEL.WEIGHTS)
    model = initial_model(cfg, train_set.class_names, start_state)
    used = min(images, len(train_set))
    calibrate(model, calibration_batches(train_set, used, cfg.TEST.BATCH_SIZE, cfg.SOLVER.SEED))
    seconds = time.perf_counter() - clock
    metrics = run_metrics(model, datasets(cfg, is_train=False), cfg) if cfg.DATASETS.TEST else {}
    state = ckpt.make_checkpoint(model, 0, {**metrics, "train_seconds": seconds})
    state.update(config=cfg.to_dict(), start=start, calibration_images=images, calibrated_on=used)
    output.mkdir(parents=True, exist_ok=True)
    (output / "config.yaml").write_text(cfg.dump())
    ckpt.save_checkpoint(state, final)
    ckpt.write_last_checkpoint(output, final)
    return TrainResult(final, 0, True, metrics, seconds, calibrated_on=used)
