"""ssdlab: a notebook-first teaching kit for compressing SSD object detectors.

    import ssdlab
    model = ssdlab.load("runs/plain/model_final.pt")     # a ready model from one checkpoint
    cfg = ssdlab.load_config("ssdlab/configs/course/plain_shapes.yaml", ["SOLVER.MAX_ITER", "100"])
    result = ssdlab.train(cfg)
    ssdlab.evaluate(model); ssdlab.prune_channels(sparse, 0.5); ssdlab.quantize(recipe, ckpt); ssdlab.export_model(model, out)
"""
from ssdlab.api import evaluate, export_model, prune_channels, quantize
from ssdlab.config import load_config
from ssdlab.errors import CfgError, CheckpointError, ConfigError, DataError, PruneError, QuantError, SSDLabError

__version__ = "0.1.0"


def load(path, device="cpu"):
    """A ready model (eval mode) from an ssdlab checkpoint (see ssdlab.engine.checkpoint.load)."""
    from ssdlab.engine.checkpoint import load as _load

    return _load(path, device)


def build_model(cfg):
    """A fresh SSD for a config (see ssdlab.model.build.build_model)."""
    from ssdlab.model.build import build_model as _build

    return _build(cfg)


def train(cfg, **options):
    """Train a config (see ssdlab.engine.train.Trainer)."""
    from ssdlab.engine.train import train as _train

    return _train(cfg, **options)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch."""
    from ssdlab.engine.train import seed_everything as _seed

    _seed(seed)


__all__ = ["load", "load_config", "build_model", "train", "evaluate", "prune_channels", "quantize", "export_model",
           "seed_everything",
           "SSDLabError", "ConfigError",
           "CfgError", "DataError", "CheckpointError", "PruneError", "QuantError"]
