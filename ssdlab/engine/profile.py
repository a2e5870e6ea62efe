"""Model cost: parameters, MACs (torch.utils.flop_counter), size in MiB and CPU latency."""
from __future__ import annotations

import statistics
import time
from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

MIB = 2 ** 20


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


def layer_table(model: nn.Module, image_size: int) -> list[dict]:
    """One row per backbone cfg layer and per head: index, type, output shape, params, MACs."""
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
    return rows


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


def measure_latency(model: nn.Module, image_size: int, runs: int = 20, warmup: int = 3,
                    threads: int | None = None) -> dict:
    """Median and spread of forward_raw time (ms) at batch 1 on the model's device."""
    device = next(model.parameters()).device
    images = torch.randn(1, 3, image_size, image_size, device=device)
    threads = threads or torch.get_num_threads()
    model.eval()
    times = []
    with torch.no_grad(), torch_threads(threads):
        for i in range(warmup + runs):
            start = time.perf_counter()
            _forward_features(model, images)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= warmup:
                times.append((time.perf_counter() - start) * 1000)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times),
            "runs": runs, "threads": threads, "device": str(device)}


def summary(model: nn.Module, image_size: int) -> dict:
    """Totals for a detector: params, MACs, fp32/bit-width-aware size and the number of priors."""
    return {"params": count_params(model), "macs": count_macs(model, image_size),
            "size_mib": size_mib(model), "priors": int(model.priors.shape[0])}


def session_latency(session, image_size: int, runs: int = 20, warmup: int = 3) -> dict:
    """Median and spread of an onnxruntime session's run time (ms) at batch 1 (input 'images')."""
    images = {"images": torch.randn(1, 3, image_size, image_size).numpy()}
    times = []
    for i in range(warmup + runs):
        start = time.perf_counter()
        session.run(None, images)
        if i >= warmup:
            times.append((time.perf_counter() - start) * 1000)
    threads = session.get_session_options().intra_op_num_threads
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times),
            "runs": runs, "threads": threads, "device": "cpu (onnxruntime)"}
