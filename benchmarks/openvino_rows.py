"""OpenVINO rows of benchmarks/int8_graph.py: the fp32 ONNX graph in OpenVINO, and NNCF's int8 PTQ of it.

    pip install 'ssdlab[peers]'     # openvino and nncf (also in [dev], so `make test` runs these rows)

OpenVINO picks its own inference precision: on a CPU with AVX512_BF16 or AMX it runs an "fp32" model in
bfloat16 unless told otherwise, so the fp32 row asks for f32 and a second row shows the default. NNCF quantizes
the same fp32 graph from the same calibration images as every other PTQ row (its default preset: symmetric
int8 weights and activations). `OpenVinoSession` answers `run(None, feeds)` like an onnxruntime session, so
the rows are timed and evaluated by the same code as the ONNX Runtime ones.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class OpenVinoGraph:
    """A row's graph for OpenVINO: an ONNX or OpenVINO IR file and the inference precision to ask for."""

    path: Path
    precision: str = "f32"  # f32 | default (OpenVINO's choice for this CPU)

    def compile(self, threads: int):
        """The model compiled for the CPU at a thread count (latency hint: one request at a time)."""
        import openvino as ov

        config: dict[str, object] = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
        if self.precision != "default":
            config["INFERENCE_PRECISION_HINT"] = self.precision
        return ov.Core().compile_model(str(self.path), "CPU", config)

    @cached_property
    def probe(self):
        """The graph compiled once on one thread, for the questions below."""
        return self.compile(1)

    def precision_used(self) -> str:
        """The inference precision OpenVINO runs this graph in on this CPU (e.g. f32, bf16)."""
        return self.probe.get_property("INFERENCE_PRECISION_HINT").to_string()

    def files_mib(self) -> float:
        """Size on disk (an IR's .xml and .bin together)."""
        files = [self.path, self.path.with_suffix(".bin")] if self.path.suffix == ".xml" else [self.path]
        return sum(f.stat().st_size for f in files if f.is_file()) / 2 ** 20

    def conv_precisions(self) -> dict:
        """Convolutions of the graph OpenVINO runs, by the precision it runs them in."""
        runtime = self.probe.get_runtime_model()
        counts = Counter(str(op.get_rt_info()["runtimePrecision"].astype(str)) for op in runtime.get_ops()
                         if op.get_rt_info()["layerType"].astype(str) == "Convolution")
        int8 = counts.pop("u8", 0) + counts.pop("i8", 0)
        return {"qlinearconv": int8, "float_conv": sum(counts.values()), "conv_precisions": dict(counts)}


class OpenVinoSession:
    """A compiled OpenVINO model with onnxruntime's `run(None, feeds)`: the outputs as numpy arrays, in order."""

    def __init__(self, graph: OpenVinoGraph, threads: int):
        self.compiled = graph.compile(threads)
        self.request = self.compiled.create_infer_request()

    def run(self, names, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """One synchronous inference."""
        results = self.request.infer(feeds)
        return [results[output] for output in self.compiled.outputs]


def nncf_int8(fp32: Path, out: Path, batches) -> OpenVinoGraph:
    """NNCF's post-training int8 quantization of an fp32 ONNX graph (default preset), saved as OpenVINO IR."""
    import nncf
    import openvino as ov

    model = ov.Core().read_model(str(fp32))
    images = [image[None].numpy() for batch in batches for image in batch]
    quantized = nncf.quantize(model, nncf.Dataset(images), subset_size=len(images))
    path = out / f"{fp32.stem}_nncf.xml"
    ov.save_model(quantized, str(path))
    return OpenVinoGraph(path)


def versions() -> dict[str, str] | None:
    """{"openvino": version, "nncf": version} when both are installed, else None (the rows are left out)."""
    try:
        import nncf
        import openvino as ov
    except ImportError:
        return None
    return {"openvino": ov.get_version().split("-")[0], "nncf": nncf.__version__}
