"""ONNX export of the BN-fused detector, checked in onnxruntime (ssdlab.export.runtime); IAO models go int8 (qdq.py).

The graph takes `images` float32 [B, 3, S, S] (RGB, mean subtracted, as in the manifest) and
returns `scores` [B, N, C] (softmax over the classes, column 0 = background) and `boxes`
[B, N, 4] (x1, y1, x2, y2 relative to the image, decoded against the priors). Post-processing
left to the caller: per class, drop scores below TEST.CONFIDENCE_THRESHOLD, keep the
TEST.PRE_NMS_TOP_K best, NMS at TEST.NMS_THRESHOLD, keep TEST.MAX_PER_IMAGE per image, and
multiply the boxes by the image width and height — what `ssdlab.model.postprocess` does.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ssdlab.export.fuse import fuse_model
from ssdlab.export.qdq import write_int8_onnx
from ssdlab.export.runtime import ScoresAndBoxes, check_onnx

if TYPE_CHECKING:
    from ssdlab.model.ssd import SSD


def write_onnx(model: SSD, out: Path, name: str, opset: int = 17) -> Path:
    """Export the fused float model to out/<name>.onnx and check it in onnxruntime against PyTorch.

    An IAO model is exported as its int8 QDQ graph instead (ssdlab.export.qdq).
    """
    if model.quant_spec is not None:
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


