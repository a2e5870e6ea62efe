"""The OpenVINO rows of benchmarks/int8_graph.py: OpenVINO runs ssdlab's ONNX graph as ONNX Runtime does, and
NNCF's PTQ of it runs every conv in int8 (skipped without `pip install 'ssdlab[peers]'`)."""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ssdlab.course import baseline
from ssdlab.engine import checkpoint as ckpt
from ssdlab.export.onnx import write_onnx
from ssdlab.export.runtime import onnx_session

pytest.importorskip("openvino")
pytest.importorskip("nncf")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from openvino_rows import OpenVinoGraph, OpenVinoSession, nncf_int8  # noqa: E402


@pytest.fixture(scope="module")
def fp32(tmp_path_factory) -> Path:
    """The committed plain baseline's fp32 graph."""
    return write_onnx(ckpt.load(baseline("plain")).eval(), tmp_path_factory.mktemp("ov"), "fp32")


def test_openvino_f32_gives_onnxruntimes_outputs(fp32):
    images = {"images": np.random.default_rng(0).standard_normal((1, 3, 128, 128), dtype=np.float32)}
    reference = onnx_session(fp32, 1).run(None, images)
    outputs = OpenVinoSession(OpenVinoGraph(fp32), 1).run(None, images)
    assert [o.shape for o in outputs] == [r.shape for r in reference]  # scores, then boxes
    for out, ref in zip(outputs, reference):
        np.testing.assert_allclose(out, ref, atol=1e-4)
    assert OpenVinoGraph(fp32).conv_precisions() == {"qlinearconv": 0, "float_conv": 21, "conv_precisions": {"f32": 21}}


def test_nncf_int8_runs_every_conv_in_int8_and_keeps_the_scores_close(fp32, tmp_path):
    generator = torch.Generator().manual_seed(0)
    batches = [torch.rand(8, 3, 128, 128, generator=generator) * 2 - 1 for _ in range(2)]
    int8 = nncf_int8(fp32, tmp_path, batches)
    assert int8.path.suffix == ".xml" and int8.conv_precisions()["qlinearconv"] == 21
    assert int8.conv_precisions()["float_conv"] == 0 and int8.files_mib() < 0.4 * fp32.stat().st_size / 2 ** 20
    images = {"images": batches[0][:1].numpy()}
    scores = OpenVinoSession(int8, 1).run(None, images)[0]
    reference = onnx_session(fp32, 1).run(None, images)[0]
    assert np.abs(scores - reference).mean() < 0.02  # class probabilities of 5460 priors
