"""Running an exported graph in onnxruntime (the `[deploy]` extra) and checking it against PyTorch.

`ScoresAndBoxes` is the part of a detector an ONNX graph holds: the network with softmax scores
and decoded boxes as outputs (post-processing stays with the caller).
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssdlab.errors import ExportError
from ssdlab.model.box_coder import decode

if TYPE_CHECKING:
    from ssdlab.model.ssd import SSD


class ScoresAndBoxes(nn.Module):
    """A detector's network part with softmax scores and decoded boxes as outputs."""

    def __init__(self, model: SSD):
        super().__init__()
        self.model = model
        self.center_variance = model.cfg.MODEL.CENTER_VARIANCE
        self.size_variance = model.cfg.MODEL.SIZE_VARIANCE

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(scores [B, N, C], boxes [B, N, 4] relative xyxy)."""
        cls_logits, bbox_pred = self.model.forward_raw(images)
        boxes = decode(bbox_pred, cast(Tensor, self.model.priors), self.center_variance, self.size_variance)
        return F.softmax(cls_logits, dim=2), boxes


def onnx_session(path: str | Path, threads: int = 0):
    """An onnxruntime CPU session (threads 0: onnxruntime's default). Its threads sleep between runs instead of
    spinning: spinning threads of one session steal the cores of the next in interleaved timing (2x slower)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ExportError("onnxruntime is not installed; pip install 'ssdlab[deploy]'") from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def optimized_ops(path: str | Path) -> list[str]:
    """The op types of the graph onnxruntime runs for an ONNX file on this CPU (fully optimized: fused kernels)."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as folder:
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(Path(folder) / "optimized.onnx")
        options.log_severity_level = 3  # no warning that this CPU-specific graph is CPU-specific: it is only read
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return [node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node]


def run_onnx(path: Path, images: np.ndarray, threads: int = 0) -> list[np.ndarray]:
    """Outputs of an ONNX model in onnxruntime on the CPU."""
    return onnx_session(path, threads).run(None, {"images": images})


def check_onnx(wrapper: nn.Module, path: Path, example: Tensor, tolerance: float = 1e-4) -> float:
    """Largest difference between onnxruntime and PyTorch; ExportError above the tolerance."""
    with torch.no_grad():
        expected = [t.numpy() for t in wrapper(example)]
    got = run_onnx(path, example.numpy())
    error = max(float(np.abs(a - b).max()) for a, b in zip(expected, got))
    if error > tolerance:
        raise ExportError(f"{path}: onnxruntime differs from PyTorch by {error:.2e} (> {tolerance}); "
                          "please report this model")
    return error
