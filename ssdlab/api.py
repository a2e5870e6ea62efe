"""The four compression steps as plain functions: what the CLI calls, and the shortest way in from a notebook.

    import ssdlab
    report = ssdlab.prune_channels("runs/plain_sparse/model_final.pt", 0.5)   # compact model, cfg, report
    result = ssdlab.quantize(recipe, "ssdlab/checkpoints/plain_shapes.pt")     # QAT (ptq=256: calibration only)
    folder = ssdlab.export_model(report.model, "export/plain_pruned", "onnx")
    metrics = ssdlab.evaluate(report.model)                                     # on its DATASETS.TEST

(`prune_channels` and `export_model`, not `prune` and `export`: those names belong to the subpackages
ssdlab.prune and ssdlab.export.)
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ssdlab.config import CfgNode, load_config, merge_overrides
from ssdlab.errors import ConfigError

if TYPE_CHECKING:  # `import ssdlab` stays light: torch is imported by the step that needs it
    from ssdlab.model.ssd import SSD


def evaluate(model: "SSD | str | Path", dataset=None, cfg: CfgNode | None = None, device: str = "cpu") -> dict:
    """VOC and COCO metrics of a model (or a checkpoint's; eval mode) on `dataset` (a dataset, or one name or path
    as DATASETS.TEST takes), by default its config's DATASETS.TEST."""
    from ssdlab.data.catalog import datasets
    from ssdlab.engine import checkpoint as ckpt
    from ssdlab.engine.inference import check_classes, evaluate_model

    model = ckpt.load(model) if isinstance(model, (str, Path)) else model
    if not hasattr(model, "cfg"):
        raise ConfigError(f"evaluate(model): give an SSD or the path of its checkpoint, not {type(model).__name__}")
    cfg = cfg or model.cfg
    if isinstance(dataset, (str, Path)):  # built as DATASETS.TEST would be (transforms, cache, bad images)
        named = cfg.clone()
        named.DATASETS.TEST = [str(dataset)]
        dataset = datasets(named, is_train=False)
    dataset = dataset if dataset is not None else datasets(cfg, is_train=False)
    check_classes(model, dataset, "the model")
    return evaluate_model(model.eval(), dataset, cfg, device)


def prune_channels(checkpoint: str | Path, percent: float | None, mode: str | None = None, cfg: CfgNode | None = None,
          regular: bool = False, drop_levels: bool = False, quick: bool = False, out: str | Path | None = None,
          tag: str | None = None, dataset=None, macs: float | None = None):
    """Prune a sparse checkpoint at `percent`, or (percent None) at the smallest percent that keeps at most `macs` of
    its MACs (see ssdlab.prune.report.prune_checkpoint): the compact model, its cfg and the report are written
    beside it (or into `out`); cfg defaults to the checkpoint's, mode to its PRUNE.TYPE (normal when it was not
    sparse-trained), dataset to the cfg's DATASETS.TEST."""
    from ssdlab.data.catalog import datasets
    from ssdlab.engine import checkpoint as ckpt
    from ssdlab.prune.plan import check_mode, check_percent
    from ssdlab.prune.report import prune_checkpoint

    cfg = cfg or ckpt.checkpoint_config(ckpt.read_checkpoint(checkpoint), str(checkpoint))
    mode = mode or (cfg.PRUNE.TYPE if cfg.PRUNE.TYPE != "no" else "normal")
    check_mode(mode)  # the request before the dataset: a typo costs no data generation
    if percent is not None:
        check_percent(percent)
    dataset = dataset if dataset is not None else datasets(cfg, is_train=False)
    return prune_checkpoint(checkpoint, cfg, percent, mode, regular, drop_levels, quick, out, tag, dataset=dataset,
                            macs=macs)


def quantize(recipe: CfgNode | str | Path, checkpoint: str | Path | None = None, overrides: list[str] | None = None,
             ptq: int | None = None, fresh: bool = False):
    """Quantization-aware training of a float checkpoint under a recipe's QUANTIZATION.* (its MODEL.WEIGHTS when
    checkpoint is None), or with ptq=N post-training quantization on N calibration images; a TrainResult.

    A recipe file's PTQ run goes to <OUTPUT_DIR>_ptq<N> unless the overrides set OUTPUT_DIR (as `quantize --ptq`),
    so it never meets the QAT run; a CfgNode recipe's runs where its OUTPUT_DIR says."""
    from ssdlab.engine.train import train
    from ssdlab.quant.apply import quant_spec
    from ssdlab.quant.ptq import post_training_quantize

    if overrides is not None and (not isinstance(overrides, (list, tuple)) or
                                  not all(isinstance(o, str) for o in overrides)):
        raise ConfigError(f"quantize(overrides=...): give a list of strings, KEY VALUE KEY VALUE "
                          f"(e.g. ['SOLVER.MAX_ITER', '200']), not {overrides!r}")
    if ptq is not None and (isinstance(ptq, bool) or not isinstance(ptq, int)):
        raise ConfigError(f"quantize(ptq=...): give the number of calibration images as an int (e.g. 256), "
                          f"not {ptq!r}")
    opts = [*(overrides or []), "MODEL.FINE_TUNE", "True",
            *(["MODEL.WEIGHTS", str(checkpoint)] if checkpoint is not None else [])]
    if isinstance(recipe, (str, Path)):
        cfg = load_config(recipe, opts, freeze=False)
        if ptq is not None and "OUTPUT_DIR" not in opts[0::2]:
            cfg.OUTPUT_DIR = f"{cfg.OUTPUT_DIR}_ptq{ptq}"
    else:
        cfg = recipe.clone()
        merge_overrides(cfg, opts)
    if quant_spec(cfg) is None:
        raise ConfigError(f"{recipe if isinstance(recipe, (str, Path)) else 'the recipe'} sets QUANTIZATION.TYPE no; "
                          "add QUANTIZATION.TYPE IAO|dorefa|BWN (and WBITS/ABITS)")
    cfg.freeze()
    return train(cfg, resume=not fresh) if ptq is None else post_training_quantize(cfg, ptq, resume=not fresh)


def export_model(model: "SSD | str | Path", out: str | Path, fmt: str = "bin", name: str | None = None,
           force: bool = False, int8: bool = False) -> Path:
    """Export a model (or a checkpoint's) into the new folder `out`: fused weights as .bin/.npz + manifest, or ONNX
    (see ssdlab.export.weights.export_weights); name defaults to the checkpoint's stem or 'model'."""
    from ssdlab.engine import checkpoint as ckpt
    from ssdlab.export.weights import export_weights

    if not isinstance(out, (str, Path)):
        raise ConfigError(f"export_model(out=...): give the folder to create as a str or Path, not {out!r}")
    if isinstance(model, (str, Path)):
        name = name or Path(model).stem
        model = ckpt.load(model)
    return export_weights(model, out, fmt, name or "model", force, int8)
