"""Model cost: parameters, MACs (torch.utils.flop_counter), size in MiB, and latency measured interleaved."""
from __future__ import annotations

import statistics
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Mapping, TypeVar, cast

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ssdlab.config import CfgNode
from ssdlab.engine.inference import evaluate_model

if TYPE_CHECKING:
    from ssdlab.model.ssd import SSD

MIB = 2 ** 20
G = TypeVar("G")


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or not)."""
    return sum(p.numel() for p in model.parameters())


def weight_bits(module: nn.Module) -> int:
    """Bits used to store one weight of a leaf module (32 for float; quantized layers say their own)."""
    return int(getattr(module, "weight_bits", 32))


def size_mib(model: nn.Module, bits: Callable[[nn.Module], int] = weight_bits) -> float:
    """Storage size in MiB, counting each module's weights at its bit width and everything else at 32 bits."""
    total_bits = 0
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            total_bits += param.numel() * (bits(module) if name == "weight" else 32)
    return total_bits / 8 / MIB


def flop_counts(model: nn.Module, image_size: int, channels: int = 3) -> dict[str, int]:
    """FLOPs (2 × MACs) per module name (root first: '<Class>' and its dotted children), one image."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            _forward_features(model, torch.zeros(1, channels, image_size, image_size, device=device))
    finally:
        model.train(was_training)
    return {name: int(sum(ops.values())) for name, ops in counter.get_flop_counts().items()}


def _forward_features(model: nn.Module, images: torch.Tensor) -> None:
    """Run the network part of a detector (no post-processing), or any plain module."""
    forward_raw = getattr(model, "forward_raw", None)
    (forward_raw or model)(images)


def count_macs(model: nn.Module, image_size: int, channels: int = 3) -> int:
    """Multiply-accumulates for one image (convolutions and linear layers)."""
    return flop_counts(model, image_size, channels).get("Global", 0) // 2


def layer_latency(model: SSD, image_size: int, runs: int = 30, warmup: int = 3,
                  threads: int | None = None) -> dict[int | str, float]:
    """Median ms of each backbone cfg layer (by index) and of the head ('head') over batch-1 forwards
    (eager mode on the model's device, timed by forward hooks: each module's own time, its inputs ready)."""
    modules: dict[int | str, nn.Module] = {**dict(enumerate(model.backbone.module_list)), "head": model.box_head}
    times: dict[int | str, list[float]] = {key: [] for key in modules}
    started: dict[int | str, float] = {}
    hooks = [hook for key, module in modules.items()
             for hook in (module.register_forward_pre_hook(_start_hook(started, key)),
                          module.register_forward_hook(_stop_hook(started, times[key], key)))]
    call = torch_call(model, image_size)
    try:
        with torch_threads(threads or torch.get_num_threads()):
            for _ in range(warmup + runs):
                call()
    finally:
        for hook in hooks:
            hook.remove()
    return {key: statistics.median(values[warmup:]) for key, values in times.items()}


def layer_table(model: SSD, image_size: int, latency: bool = False) -> list[dict]:
    """One row per backbone cfg layer and per head: index, type, output shape, params, MACs (and with latency,
    the median ms of layer_latency)."""
    shapes: dict[int, tuple] = {}
    hooks = [layer.register_forward_hook(_shape_hook(shapes, i))
             for i, layer in enumerate(model.backbone.module_list)]
    try:
        flops = flop_counts(model, image_size)
    finally:
        for hook in hooks:
            hook.remove()
    backbone, head = model.backbone, model.box_head  # forward_raw calls each directly: they are the counter's roots
    rows = []
    for i, (layer, definition) in enumerate(zip(backbone.module_list, backbone.defs)):
        rows.append({"index": i, "type": definition["type"], "shape": shapes.get(i),
                     "params": count_params(layer),
                     "macs": flops.get(f"{type(backbone).__name__}.module_list.{i}", 0) // 2})
    rows.append({"index": "head", "type": type(head).__name__, "shape": None,
                 "params": count_params(head), "macs": flops.get(type(head).__name__, 0) // 2})
    if latency:
        times = layer_latency(model, image_size)
        for row in rows:
            row["ms"] = times[row["index"]]
    return rows


def _start_hook(started: dict, key: int | str) -> Callable:
    """A forward pre-hook that notes when a module's forward starts."""
    def hook(*_):
        started[key] = time.perf_counter()
    return hook


def _stop_hook(started: dict, times: list[float], key: int | str) -> Callable:
    """A forward hook that appends the ms since the module's forward started."""
    def hook(*_):
        times.append((time.perf_counter() - started[key]) * 1000)
    return hook


def _shape_hook(shapes: dict, index: int) -> Callable:
    """A forward hook that records a layer's output shape (without the batch dimension)."""
    def hook(_module, _inputs, output):
        shapes[index] = tuple(output.shape[1:])
    return hook


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Temporarily run torch on `threads` intra-op threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16")  # int8/bf16 speed


def cpu_flags() -> str:
    """The CPU's vector and matrix instruction sets that decide int8 and bfloat16 speed, e.g. 'avx2 avx512_vnni'."""
    info = Path("/proc/cpuinfo")
    flags = set(info.read_text().split()) if info.is_file() else set()
    found = [flag for flag in CPU_FLAGS if flag in flags]
    return " ".join(found) or f"{torch.backends.cpu.get_cpu_capability()} (no /proc/cpuinfo flags)"


def torch_call(model: nn.Module, image_size: int) -> Callable[[], None]:
    """A contender for compare_latency: one batch-1 forward_raw of a model on its device (no post-processing)."""
    device = next(model.parameters()).device
    images = torch.randn(1, 3, image_size, image_size, device=device)
    model.eval()

    def call() -> None:
        with torch.no_grad():
            _forward_features(model, images)
        if device.type == "cuda":
            torch.cuda.synchronize()
    return call


def session_call(session, image_size: int) -> Callable[[], None]:
    """A contender for compare_latency: one batch-1 run of an onnxruntime session (input 'images')."""
    images = {"images": torch.randn(1, 3, image_size, image_size).numpy()}
    return lambda: session.run(None, images)


def compare_latency(contenders: Mapping[str, Callable[[], object]], runs: int = 30, warmup: int = 3,
                    threads: int | None = None, warm_calls: int = 0) -> dict[str, dict]:
    """Time contenders interleaved: each round runs every one once, in turn, so a slower spell of the machine
    falls on all alike (warm_calls: untimed calls just before each timed one, so that many contenders do not
    time each other's evicted caches). Per contender: median, quartiles, min and max (ms), runs, torch threads,
    CPU flags."""
    threads = threads or torch.get_num_threads()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    with torch_threads(threads):
        for round_ in range(warmup + runs):
            for name, call in contenders.items():
                for _ in range(warm_calls):
                    call()
                start = time.perf_counter()
                call()
                if round_ >= warmup:
                    times[name].append((time.perf_counter() - start) * 1000)
    flags = cpu_flags()
    return {name: {"median_ms": statistics.median(values), "p25_ms": float(np.percentile(values, 25)),
                   "p75_ms": float(np.percentile(values, 75)), "min_ms": min(values), "max_ms": max(values),
                   "runs": runs, "threads": threads, "cpu": flags} for name, values in times.items()}


def thread_counts() -> tuple[int, ...]:
    """One thread, and every thread torch uses (once when that is one)."""
    return tuple(dict.fromkeys((1, torch.get_num_threads())))


def compare_sessions(graphs: Mapping[str, G], opener: Callable[[G, int], object], image_size: int,
                     runs: int = 30) -> dict[int, dict[str, dict]]:
    """compare_latency of batch-1 sessions (opener(graph, threads) gives one with run(None, feeds)) at each of
    thread_counts(): {threads: {name: result}}."""
    return {threads: compare_latency({name: session_call(opener(graph, threads), image_size)
                                      for name, graph in graphs.items()}, runs=runs, threads=threads)
            for threads in thread_counts()}


def measure_latency(model: nn.Module, image_size: int, runs: int = 30, warmup: int = 3,
                    threads: int | None = None) -> dict:
    """compare_latency of one model's forward_raw at batch 1 (see there), with its device."""
    device = str(next(model.parameters()).device)
    result = compare_latency({"model": torch_call(model, image_size)}, runs, warmup, threads)["model"]
    return {**result, "device": device}


def latency_note(result: dict) -> str:
    """How a compare_latency figure was measured, for a table's caption."""
    return (f"batch 1, median of {result['runs']} interleaved runs, {result['threads']} thread"
            f"{'s' if result['threads'] > 1 else ''}, CPU flags: {result['cpu']}")


def summary(model: SSD, image_size: int) -> dict:
    """Totals for a detector: params, MACs, fp32/bit-width-aware size and the number of priors."""
    return {"params": count_params(model), "macs": count_macs(model, image_size),
            "size_mib": size_mib(model), "priors": int(cast(torch.Tensor, model.priors).shape[0])}


def measure(name: str, model: nn.Module, dataset, cfg: CfgNode, params: int | None = None,
            latency: bool = True, runs: int = 30) -> dict:
    """One report row: params, size, MACs, CPU latency (batch 1, median of runs) and the VOC/COCO metrics."""
    size = cfg.INPUT.IMAGE_SIZE
    row = {"model": name, "params": params if params is not None else count_params(model),
           "size_mib": size_mib(model), "macs": count_macs(model, size),
           "latency_ms": measure_latency(model, size, runs=runs)["median_ms"] if latency else None,
           "voc_map": None, "coco_ap": None}
    if dataset is not None:
        result = evaluate_model(model, dataset, cfg)
        row.update(voc_map=result["voc_map"], coco_ap=result["coco_ap"])
    return row
