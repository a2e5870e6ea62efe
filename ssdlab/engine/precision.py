"""Training precision: float32, or bfloat16 autocast where the hardware computes it natively.

`SOLVER.PRECISION`:

- `fp32`: every operation in float32 (the default, and the original SSD code's).
- `bf16`: the forward pass runs under `torch.autocast(dtype=torch.bfloat16)`: convolutions
  and matrix products compute in bfloat16 (float32's range, an 8-bit mantissa), which a CPU
  with AVX512-BF16 or AMX and recent GPUs run about 1.5-2x faster. Weights, gradients, the
  optimizer state and the loss stay float32, so a checkpoint is the same kind either way.
- `auto`: bf16 where the device computes bfloat16 natively, fp32 elsewhere (on other CPUs
  bfloat16 is emulated and slower than float32). The course recipes use `auto`.

Quantization-aware training always runs in fp32: its fake-quantized values (integer codes
times a scale) need float32's mantissa, so `auto` gives fp32 there and `bf16` is refused.
Evaluation and inference run in fp32 whatever the setting.
"""
from __future__ import annotations

from contextlib import AbstractContextManager

import torch

from ssdlab.config import CfgNode, check_choice
from ssdlab.errors import ConfigError

def native_bf16(device: torch.device) -> bool:
    """True when the device computes bfloat16 in hardware (AVX512-BF16 or AMX on a CPU; a CUDA GPU that supports it)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        checks = (getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
        return any(check() for check in checks if check is not None)
    return False


def training_dtype(cfg: CfgNode, device: torch.device) -> torch.dtype:
    """The dtype the forward pass computes in: torch.bfloat16 or torch.float32, as SOLVER.PRECISION says."""
    choice = cfg.SOLVER.PRECISION
    check_choice("SOLVER.PRECISION", choice, "config")
    quantized = cfg.QUANTIZATION.TYPE != "no"
    if choice == "bf16" and quantized:
        raise ConfigError(f"SOLVER.PRECISION bf16 cannot train a quantized model (QUANTIZATION.TYPE "
                          f"{cfg.QUANTIZATION.TYPE}): fake quantization needs float32; use fp32 or auto")
    if choice == "bf16" or (choice == "auto" and not quantized and native_bf16(device)):
        return torch.bfloat16
    return torch.float32


def dtype_name(dtype: torch.dtype) -> str:
    """'bfloat16' or 'float32': the dtype without its torch. prefix, for logs and tables."""
    return str(dtype).removeprefix("torch.")


def autocast(device: torch.device, dtype: torch.dtype) -> AbstractContextManager:
    """torch.autocast to dtype on the device, or a no-op for float32."""
    return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
