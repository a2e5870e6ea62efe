"""ONNX export of the BN-fused detector, checked in onnxruntime (the `[deploy]` extra); IAO models go int8 (qdq.py).

The graph takes `images` float32 [B, 3, S, S] (RGB, mean subtracted, as in the manifest) and
returns `scores` [B, N, C] (softmax over the classes, column 0 = background) and `boxes`
[B, N, 4] (x1, y1, x2, y2 relative to the image, decoded against the priors). Post-processing
left to the caller: per class, drop scores below TEST.CONFIDENCE_THRESHOLD, keep the
TEST.PRE_NMS_TOP_K best, NMS at TEST.NMS_THRESHOLD, keep TEST.MAX_PER_IMAGE per image, and
multiply the boxes by the image width and height — what `ssdlab.model.postprocess` does.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssdlab.errors import ExportError
from ssdlab.export.fuse import fuse_model
from ssdlab.model.box_coder import decode


class ScoresAndBoxes(nn.Module):
    """A detector's network part with softmax scores and decoded boxes as outputs."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.center_variance = model.cfg.MODEL.CENTER_VARIANCE
        self.size_variance = model.cfg.MODEL.SIZE_VARIANCE

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(scores [B, N, C], boxes [B, N, 4] relative xyxy)."""
        cls_logits, bbox_pred = self.model.forward_raw(images)
        boxes = decode(bbox_pred, self.model.priors, self.center_variance, self.size_variance)
        return F.softmax(cls_logits, dim=2), boxes


def write_onnx(model: nn.Module, out: Path, name: str, opset: int = 17) -> Path:
    """Export the fused float model to out/<name>.onnx and check it in onnxruntime against PyTorch.

    An IAO model is exported as its int8 QDQ graph instead (ssdlab.export.qdq).
    """
    if getattr(model, "quant_spec", None) is not None:
        from ssdlab.export.qdq import write_int8_onnx

        return write_int8_onnx(model, out, name, opset)
    wrapper = ScoresAndBoxes(fuse_model(model).cpu()).eval()
    size = model.cfg.INPUT.IMAGE_SIZE
    example = torch.randn(1, 3, size, size)
    path = out / f"{name}.onnx"
    torch.onnx.export(wrapper, (example,), str(path), input_names=["images"], output_names=["scores", "boxes"],
                      dynamic_axes={"images": {0: "batch"}, "scores": {0: "batch"}, "boxes": {0: "batch"}},
                      opset_version=opset, dynamo=False)
    check_onnx(wrapper, path, example)
    return path


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
