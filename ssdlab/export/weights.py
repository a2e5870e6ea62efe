"""Export a model's weights for hardware: the original SSD code's .bin layout plus a JSON manifest.

The exported network is the BN-fused model (ssdlab.export.fuse): every conv has a weight and
a bias. Tensors are written in state-dict order — backbone convs in cfg order, then every
class head, then every box head — as little-endian float32 without headers:

    <name>_weights.bin   all weights, one after another (the original SSD code's file)
    <name>_bias.bin      all biases
    <name>_priors.bin    the prior boxes (cx, cy, w, h in [0, 1]), float32 [N, 4]
    <name>_codes.bin     IAO models: the integer weight codes (int8 up to 8 bits, else int16)
    <name>_bias_int32.bin IAO models: biases in int32 at scale s_input · s_weight[o]
    manifest.json        every tensor: name, cfg layer, shape, dtype, file, byte offset and length;
                         for quantized layers the codes, per-channel scales and zero points,
                         the input scale and zero point; the input preprocessing and the priors

`txt` writes the same tensors as readable text, `npz` as one NumPy archive. Every export folder also holds
the hidden `.ssdlab-export` ({"format", "name"}): `--force` replaces only such a folder (or an empty one). `load_weights`
reads edited .bin files back into the fused model (the original SSD code's FPGA round trip).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from torch import Tensor, nn

from ssdlab.errors import ExportError
from ssdlab.export.fuse import fuse_model
from ssdlab.export.onnx import write_onnx
from ssdlab.files import check_file_stem, check_output_folder, staged_folder
from ssdlab.quant.integer import integer_layer
from ssdlab.quant.layers import QuantConv2d, QuantSpec

if TYPE_CHECKING:
    from ssdlab.model.ssd import SSD

FORMATS = ("bin", "txt", "npz")
MARKER = ".ssdlab-export"  # in every export folder: what --force may replace


def layer_of(name: str) -> int | str:
    """The cfg layer index of a backbone tensor, or 'head' / 'l2norm'."""
    parts = name.split(".")
    if parts[:2] == ["backbone", "module_list"]:
        return int(parts[2])
    return "l2norm" if parts[1] == "l2norms" else "head"


def _float_tensors(fused: nn.Module) -> list[tuple[str, np.ndarray]]:
    """(name, float32 array) of every parameter of the fused model, in state-dict order."""
    return [(name, value.detach().cpu().numpy().astype("<f4")) for name, value in fused.named_parameters()]


def quantized_convs(fused: nn.Module) -> dict[str, QuantConv2d]:
    """Parameter-name prefix -> QuantConv2d for the quantized convs of a fused model."""
    return {name: m for name, m in fused.named_modules() if isinstance(m, QuantConv2d) and m.spec.wbits < 32}


def check_codes(model: SSD, int_codes: bool) -> bool:
    """Whether integer codes are exported: IAO models always; others refuse when asked."""
    spec: QuantSpec | None = model.quant_spec
    if spec is not None and spec.kind == "IAO":
        return True
    if int_codes:
        kind = spec.kind if spec else "float"
        raise ExportError(f"{{--int8}} asks for integer weight codes, but this is a {kind} model: "
                          + ("DoReFa/BWN weights are not integers times a per-channel scale, so " if spec else "")
                          + "only IAO-quantized models have int8 codes; export without --int8 or train with "
                            "QUANTIZATION.TYPE IAO")
    return False


def manifest_header(model: SSD, name: str) -> dict:
    """Model-level facts: input preprocessing, priors, classes, quantization."""
    cfg = model.cfg
    spec: QuantSpec | None = model.quant_spec
    return {"format": "ssdlab-weights", "version": 1, "name": name, "bn_fused": True, "byte_order": "little",
            "input": {"size": cfg.INPUT.IMAGE_SIZE, "channel_order": "RGB", "layout": "NCHW",
                      "mean": list(cfg.INPUT.PIXEL_MEAN), "std": None,
                      "note": "x = image (0..255, RGB) resized to size x size, minus mean; no division"},
            "priors": {"file": f"{name}_priors.bin", "count": int(len(cast(Tensor, model.priors))), "dtype": "float32",
                       "layout": "cx, cy, w, h (relative to the image)",
                       "center_variance": cfg.MODEL.CENTER_VARIANCE, "size_variance": cfg.MODEL.SIZE_VARIANCE},
            "classes": list(model.class_names),
            "quantization": None if spec is None else {"type": spec.kind, "wbits": spec.wbits, "abits": spec.abits,
                                                       "mode": spec.mode}}


class _Appender:
    """Append arrays to one binary file, remembering offsets."""

    def __init__(self, path: Path):
        self.path, self.offset = path, 0
        self.handle = path.open("wb")

    def add(self, array: np.ndarray) -> dict:
        """Write an array; its file, offset, length and dtype."""
        data = np.ascontiguousarray(array).tobytes()
        self.handle.write(data)
        entry = {"file": self.path.name, "offset": self.offset, "length": len(data), "dtype": str(array.dtype)}
        self.offset += len(data)
        return entry

    def close(self) -> None:
        """Close the file."""
        self.handle.close()


def write_bin(model: SSD, out: Path, name: str, int_codes: bool = False) -> dict:
    """Write the .bin files and manifest.json into out; returns the manifest."""
    codes = check_codes(model, int_codes)
    fused = fuse_model(model).cpu()
    files = {kind: _Appender(out / f"{name}_{kind}.bin") for kind in ("weights", "bias")}
    if codes:
        files.update(codes=_Appender(out / f"{name}_codes.bin"), bias_int32=_Appender(out / f"{name}_bias_int32.bin"))
    quantized = {prefix: (conv, integer_layer(conv)) for prefix, conv in quantized_convs(fused).items()} if codes else {}
    tensors = []
    try:
        for tensor_name, array in _float_tensors(fused):
            kind = "bias" if tensor_name.endswith(".bias") else "weights"
            entry = {"name": tensor_name, "layer": layer_of(tensor_name), "shape": list(array.shape),
                     **files[kind].add(array)}
            prefix = tensor_name.rsplit(".", 1)[0]
            if prefix in quantized:
                entry.update(_integer_entry(*quantized[prefix], kind, files))
            tensors.append(entry)
        np.asarray(cast(Tensor, model.priors).cpu(), dtype="<f4").tofile(out / f"{name}_priors.bin")
    finally:
        for appender in files.values():
            appender.close()
    manifest = {**manifest_header(model, name), "tensors": tensors}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def _integer_entry(conv: QuantConv2d, layer: dict, kind: str, files: dict) -> dict:
    """The manifest additions of a quantized conv's weight or bias (layer = its integer_layer)."""
    if kind == "bias":
        return {"int32": files["bias_int32"].add(layer["bias_int32"])}
    return {"codes": files["codes"].add(layer["codes"]), "bits": conv.spec.wbits,
            "weight_scales": layer["weight_scales"].tolist(), "weight_zero_points": 0,
            "input_scale": layer["input_scale"], "input_zero_point": layer["input_zero_point"]}


def write_txt(model: SSD, out: Path, name: str) -> None:
    """A readable dump: one block per tensor (name, shape, then 8 values a line)."""
    fused = fuse_model(model).cpu()
    for kind in ("weights", "bias"):
        with (out / f"{name}_{kind}.txt").open("w") as handle:
            for tensor_name, array in _float_tensors(fused):
                if tensor_name.endswith(".bias") != (kind == "bias"):
                    continue
                handle.write(f"# {tensor_name} shape={list(array.shape)} layer={layer_of(tensor_name)}\n")
                flat = array.reshape(-1)
                for start in range(0, len(flat), 8):
                    handle.write(" ".join(f"{v:.8g}" for v in flat[start:start + 8]) + "\n")


def write_npz(model: SSD, out: Path, name: str) -> None:
    """Every fused tensor (and the priors) in one NumPy archive."""
    fused = fuse_model(model).cpu()
    tensors = cast("dict[str, Any]", dict(_float_tensors(fused)))  # Any: savez's own keywords are typed too
    np.savez(out / f"{name}.npz", priors=cast(Tensor, model.priors).cpu().numpy(), **tensors)


def exported_files(folder: str | Path) -> list[Path]:
    """The files of an export folder, sorted, less the hidden MARKER."""
    return sorted(p for p in Path(folder).iterdir() if p.name != MARKER)


def check_replaceable(out: Path, force: bool) -> None:
    """ExportError unless `out` is new, or (with force) empty or an earlier export (it holds MARKER)."""
    if not out.exists():
        return
    if not force:
        raise ExportError(f"{out} already exists; choose another {{--out}} or pass {{--force}} to replace it")
    if any(out.iterdir()) and not (out / MARKER).is_file():
        raise ExportError(f"{{--force}} replaces only an earlier export, but {out} holds other files (no {MARKER}); "
                          "choose another {--out}, or empty that folder yourself")


def export_weights(model: SSD, out: str | Path, fmt: str = "bin", name: str = "model",
                   force: bool = False, int_codes: bool = False) -> Path:
    """Export into the folder `out` (all or nothing; an existing folder needs force)."""
    if fmt not in FORMATS + ("onnx",):
        raise ExportError(f"{{--format}} {fmt!r} is unknown; use one of {', '.join(FORMATS + ('onnx',))}")
    out = Path(out)
    check_output_folder(out, "{--out}", ExportError, replaced=True)
    check_file_stem(name, "{--name}", ExportError)
    check_replaceable(out, force)
    with staged_folder(out) as work:
        (work / MARKER).write_text(json.dumps({"format": fmt, "name": name}))
        if fmt == "bin":
            write_bin(model, work, name, int_codes)
        elif fmt == "txt":
            check_codes(model, int_codes)
            write_txt(model, work, name)
        elif fmt == "npz":
            check_codes(model, int_codes)
            write_npz(model, work, name)
        else:
            write_onnx(model, work, name)
    return out


def load_weights(model: SSD, folder: str | Path) -> SSD:
    """The fused model with every tensor read from the folder's .bin files (edited ones included)."""
    folder = Path(folder)
    path = folder / "manifest.json"
    if not path.is_file():
        raise ExportError(f"{folder} has no manifest.json; give a folder written by `ssdlab export --format bin`")
    manifest = json.loads(path.read_text())
    fused = fuse_model(model).cpu()
    params = dict(fused.named_parameters())
    with torch.no_grad():
        for entry in manifest["tensors"]:
            if entry["name"] not in params or list(params[entry["name"]].shape) != entry["shape"]:
                raise ExportError(f"{path}: tensor {entry['name']} {entry['shape']} does not fit this model; "
                                  "load the weights into the model they were exported from")
            params[entry["name"]].copy_(torch.from_numpy(read_tensor(folder, entry)))
    return fused


def read_tensor(folder: str | Path, entry: dict, part: str | None = None) -> np.ndarray:
    """One manifest tensor read by its byte offset: the float32 values, or entry[part] (e.g. 'codes')."""
    where = entry[part] if part else {**entry, "dtype": "<f4"}
    dtype = np.dtype(where["dtype"])
    data = np.fromfile(Path(folder) / where["file"], dtype=dtype, count=where["length"] // dtype.itemsize,
                       offset=where["offset"])
    return data.reshape(entry["shape"])
