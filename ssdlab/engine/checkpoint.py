"""Self-describing checkpoints: one .pt file that rebuilds its model, written atomically.

A checkpoint is a dict of plain types and tensors (so `torch.load(weights_only=True)` reads it):
    format, version, model (state dict), cfg_text (backbone .cfg), config (resolved), class_names,
    quant (the QuantSpec of a quantized model, else None), iteration, metrics, and for resuming:
    optimizer, scheduler, rng.
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from ssdlab.config import CfgNode, config_from_dict
from ssdlab.errors import CheckpointError, ConfigError
from ssdlab.files import load_tensors, read_text, staged
from ssdlab.quant.layers import QUANTIZER_STATE

if TYPE_CHECKING:
    from ssdlab.model.ssd import SSD

FORMAT = "ssdlab-checkpoint"
VERSION = 1
REQUIRED = ("model", "cfg_text", "config")  # what rebuilding a model needs


def make_checkpoint(model: nn.Module, iteration: int = 0, metrics: dict | None = None,
                    **training_state: Any) -> dict:
    """The checkpoint dict of a model (plus optional optimizer/scheduler/rng state)."""
    net = cast("SSD", getattr(model, "module", model))  # unwrap DistributedDataParallel
    return {"format": FORMAT, "version": VERSION,
            "model": {k: v.detach().cpu() for k, v in net.state_dict().items()},
            "cfg_text": net.cfg_text, "config": net.cfg.to_dict(),
            "class_names": list(net.class_names),
            "quant": net.quant_spec.to_dict() if net.quant_spec is not None else None, "iteration": int(iteration),
            "metrics": metrics or {}, **training_state}


def weights_digest(checkpoint: dict) -> str:
    """A short SHA-256 of a checkpoint's weights (names, shapes, values): equal only for the same weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(checkpoint["model"].items()):
        digest.update(f"{name}{tuple(tensor.shape)}".encode())
        digest.update(tensor.contiguous().numpy().tobytes())  # a read checkpoint is on the CPU
    return digest.hexdigest()[:16]


def sealed(checkpoint: dict) -> dict:
    """The checkpoint with the digest of its weights as they are now, which read_checkpoint checks."""
    return {**checkpoint, "weights_digest": weights_digest(checkpoint)}


def save_checkpoint(checkpoint: dict, path: str | Path) -> Path:
    """Write (sealed) through a temporary file in the same folder, then rename: a crash never leaves half a file."""
    path = Path(path)
    with staged(path) as (temp,):
        torch.save(sealed(checkpoint), temp)
    return path


def read_checkpoint(path: str | Path) -> dict:
    """Load and validate an ssdlab checkpoint (weights_only=True)."""
    if not isinstance(path, (str, os.PathLike)):
        raise CheckpointError(f"a checkpoint is named by its path (a str or Path), not {type(path).__name__}; a model "
                              "in memory is saved first: save_checkpoint(make_checkpoint(model), 'model.pt')")
    if not str(path).strip():
        raise CheckpointError("no checkpoint given (an empty path); set MODEL.WEIGHTS or --ckpt to a .pt file "
                              "written by `python -m ssdlab train`")
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder; give a .pt file in it (e.g. {path / 'model_final.pt'})")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; give the path of a .pt file "
                              "written by `python -m ssdlab train` (see OUTPUT_DIR/last_checkpoint)")
    checkpoint = load_tensors(path, CheckpointError, "ssdlab checkpoint (train again or copy it again)")
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an ssdlab checkpoint (no '{FORMAT}' marker); "
                              "ssdlab loads only files written by ssdlab train/prune/quantize")
    if checkpoint.get("version", 0) > VERSION:
        raise CheckpointError(f"{path} was written by a newer ssdlab (format version "
                              f"{checkpoint['version']}); upgrade ssdlab to read it")
    missing = [key for key in REQUIRED if key not in checkpoint]
    if missing or not isinstance(checkpoint["model"], dict):
        lacking = f"lacks {', '.join(repr(k) for k in missing)}" if missing else "holds no state dict under 'model'"
        raise CheckpointError(f"{path} has the ssdlab marker but {lacking}, so no model can be rebuilt from it; "
                              "it is damaged or was edited by hand: use a file written by ssdlab train/prune/quantize")
    stored = checkpoint.get("weights_digest")  # None in a file written before checkpoints were sealed
    if stored is not None and stored != weights_digest(checkpoint):
        raise CheckpointError(f"{path} is damaged: its weights are not the ones it was saved with (their digest "
                              "differs; bytes changed on disk or in a copy); copy it again, or train it again")
    return checkpoint


def checkpoint_config(checkpoint: dict, where: str = "checkpoint") -> CfgNode:
    """The resolved config stored in a checkpoint."""
    try:
        return config_from_dict(checkpoint["config"])
    except ConfigError as err:
        raise CheckpointError(f"{where}: its stored config does not fit this ssdlab: {err}") from None


# SSDLite heads' depthwise bias, absent from checkpoints written before it was added (zero = no bias)
LITE_DEPTHWISE_BIAS = re.compile(r"box_head\.(cls|reg)_headers\.\d+\.conv\.bias")


def load_state_checked(model: nn.Module, state: dict, where: str = "checkpoint") -> None:
    """load_state_dict that names the first missing, unexpected or mis-shaped tensor.

    A quantization-aware model may load a float checkpoint: its activation ranges start unset.
    """
    own = model.state_dict()
    for key, tensor in state.items():
        if key not in own:
            raise CheckpointError(f"{where}: tensor {key!r} {tuple(tensor.shape)} has no place in the "
                                  "model; the checkpoint was made for a different cfg")
        if own[key].shape != tensor.shape:
            raise CheckpointError(f"{where}: tensor {key!r} has shape {tuple(tensor.shape)} in the "
                                  f"checkpoint but {tuple(own[key].shape)} in the model; "
                                  "the checkpoint does not match this cfg")
    state = {**state, **{key: torch.zeros_like(own[key]) for key in own if key not in state
                         and LITE_DEPTHWISE_BIAS.fullmatch(key)}}  # older SSDLite checkpoints: the same function
    missing = [key for key in own if key not in state and not QUANTIZER_STATE.fullmatch(key)]
    if missing:
        raise CheckpointError(f"{where}: the checkpoint lacks tensor {missing[0]!r} "
                              f"{tuple(own[missing[0]].shape)} (and {len(missing) - 1} more)")
    model.load_state_dict(state, strict=False)


def model_from_checkpoint(checkpoint: dict, where: str = "checkpoint") -> SSD:
    """Rebuild the model a checkpoint describes (quantized as its stored QuantSpec says) and load its weights."""
    from ssdlab.model.build import stored_model

    model = stored_model(checkpoint_config(checkpoint, where), checkpoint["cfg_text"], checkpoint.get("class_names"),
                         checkpoint.get("quant"))
    load_state_checked(model, checkpoint["model"], where)
    model.metrics = dict(checkpoint.get("metrics", {}))
    return model


def load(path: str | Path, device: str | torch.device = "cpu") -> SSD:
    """A ready model (eval mode) from an ssdlab checkpoint: `model = ssdlab.load("model_final.pt")`."""
    model = model_from_checkpoint(read_checkpoint(path), where=str(path))
    return model.to(device).eval()


def last_checkpoint(output_dir: str | Path) -> Path | None:
    """The checkpoint named in OUTPUT_DIR/last_checkpoint; None without that file; CheckpointError when it names
    no checkpoint file (resuming from nothing would silently start over)."""
    marker = Path(output_dir) / "last_checkpoint"
    if not marker.is_file():
        return None
    name = read_text(marker, CheckpointError, "the name of a checkpoint in that folder").strip()
    path = Path(output_dir) / name
    if not name or not path.is_file():
        found = ", ".join(sorted(p.name for p in Path(output_dir).glob("model_*.pt"))) or "none"
        raise CheckpointError(f"{marker} names {name!r}, which is not a file in {output_dir} (checkpoints there: "
                              f"{found}); write one of their names into it to resume from there, or delete it "
                              "(or train with --fresh) to start over")
    return path


def write_last_checkpoint(output_dir: str | Path, path: Path) -> None:
    """Point OUTPUT_DIR/last_checkpoint at path (atomically)."""
    with staged(Path(output_dir) / "last_checkpoint") as (temp,):
        temp.write_text(path.name + "\n")


def release_copy(src: str | Path, dst: str | Path) -> Path:
    """Save a checkpoint without its resume state (optimizer, scheduler, RNG): a small file to share."""
    state = read_checkpoint(src)
    for key in ("optimizer", "scheduler", "rng"):
        state.pop(key, None)
    return save_checkpoint(state, dst)
