"""Weights export: the .bin layout against the manifest, the round trip, int8 codes, ONNX, bad input."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from ssdlab.engine.checkpoint import make_checkpoint, save_checkpoint
from ssdlab.errors import ExportError
from ssdlab.export.fuse import fuse_model
from ssdlab.export.weights import export_weights, load_weights
from ssdlab.model.build import build_model
from tests.conftest import TESTS

QUAN = ["MODEL.BACKBONE.CFG", str(TESTS / "data" / "tiny_quan.cfg")]


def trained_like(model, size: int = 64):
    """Non-trivial BN statistics and activation ranges (one training-mode pass on size x size inputs)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2)
        model.train().forward_raw(torch.randn(2, 3, size, size))
    return model.eval()


def test_bin_layout_matches_the_manifest_and_round_trips(tiny_cfg, tmp_path):
    model = trained_like(build_model(tiny_cfg()))
    out = export_weights(model, tmp_path / "w", "bin", name="tiny")
    manifest = json.loads((out / "manifest.json").read_text())
    fused = dict(fuse_model(model).named_parameters())
    names = [e["name"] for e in manifest["tensors"]]
    assert names == list(fused)  # state-dict order: backbone in cfg order, class heads, box heads
    assert names.index("box_head.cls_headers.1.weight") < names.index("box_head.reg_headers.0.weight")
    for kind in ("weights", "bias"):
        entries = [e for e in manifest["tensors"] if e["file"] == f"tiny_{kind}.bin"]
        assert sum(e["length"] for e in entries) == (out / f"tiny_{kind}.bin").stat().st_size
        raw = (out / f"tiny_{kind}.bin").read_bytes()
        for e in entries:
            values = np.frombuffer(raw[e["offset"]:e["offset"] + e["length"]], dtype="<f4").reshape(e["shape"])
            np.testing.assert_array_equal(values, fused[e["name"]].detach().numpy())
    priors = np.fromfile(out / "tiny_priors.bin", dtype="<f4").reshape(-1, 4)
    np.testing.assert_array_equal(priors, model.priors.numpy())
    assert manifest["input"]["mean"] == [123, 117, 104] and manifest["input"]["std"] is None

    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        reloaded = load_weights(model, out)
        assert torch.equal(reloaded.forward_raw(x)[0], fuse_model(model).forward_raw(x)[0])
        entry = next(e for e in manifest["tensors"] if e["name"] == "backbone.module_list.1.conv.bias")
        with (out / entry["file"]).open("r+b") as handle:  # a hardware engineer edits one bias
            handle.seek(entry["offset"])
            handle.write(np.float32(7.5).tobytes())
        edited = load_weights(model, out)
        assert edited.backbone.module_list[1].conv.bias[0].item() == 7.5


def test_iao_export_has_codes_scales_and_int32_biases(tiny_cfg, tmp_path):
    model = trained_like(build_model(tiny_cfg(*QUAN, "QUANTIZATION.TYPE", "IAO")))
    out = export_weights(model, tmp_path / "q", "bin")
    manifest = json.loads((out / "manifest.json").read_text())
    fused = fuse_model(model)
    conv = fused.backbone.module_list[2].conv
    weight = next(e for e in manifest["tensors"] if e["name"] == "backbone.module_list.2.conv.weight")
    bias = next(e for e in manifest["tensors"] if e["name"] == "backbone.module_list.2.conv.bias")
    codes = np.fromfile(out / weight["codes"]["file"], dtype=np.int8, count=weight["codes"]["length"],
                        offset=weight["codes"]["offset"]).reshape(weight["shape"])
    scales = np.asarray(weight["weight_scales"], dtype=np.float32).reshape(-1, 1, 1, 1)
    assert codes.min() >= -128 and codes.max() <= 127 and np.abs(codes).max(axis=(1, 2, 3)).min() == 127
    np.testing.assert_allclose(codes * scales, conv.quantized_weight().detach().numpy(), atol=1e-6)
    int32 = np.fromfile(out / bias["int32"]["file"], dtype="<i4", count=bias["int32"]["length"] // 4,
                        offset=bias["int32"]["offset"])
    expected = np.round(conv.bias.detach().numpy() / (weight["input_scale"] * scales.ravel()))
    np.testing.assert_array_equal(int32, expected)
    assert "codes" not in next(e for e in manifest["tensors"] if e["name"] == "backbone.module_list.0.conv.weight")
    assert manifest["quantization"]["type"] == "IAO"


def test_onnx_matches_pytorch(tiny_cfg, tmp_path):
    pytest.importorskip("onnxruntime")
    from ssdlab.export.runtime import run_onnx, ScoresAndBoxes

    model = trained_like(build_model(tiny_cfg()))
    out = export_weights(model, tmp_path / "o", "onnx")
    x = torch.randn(2, 3, 64, 64)  # another batch size than the export example
    scores, boxes = run_onnx(out / "model.onnx", x.numpy())
    with torch.no_grad():
        expected = ScoresAndBoxes(model).eval()(x)
    np.testing.assert_allclose(scores, expected[0].numpy(), atol=1e-4)
    np.testing.assert_allclose(boxes, expected[1].numpy(), atol=1e-4)


def test_bad_exports_leave_nothing(tiny_cfg, tmp_path):
    dorefa = build_model(tiny_cfg(*QUAN, "QUANTIZATION.TYPE", "dorefa")).eval()
    with pytest.raises(ExportError, match="only IAO"):
        export_weights(dorefa, tmp_path / "d", "bin", int_codes=True)
    with pytest.raises(ExportError, match="unknown"):
        export_weights(dorefa, tmp_path / "d", "xml")
    assert list(tmp_path.iterdir()) == []  # no folder, no temporary leftovers
    model = build_model(tiny_cfg()).eval()
    export_weights(model, tmp_path / "w", "npz")
    with pytest.raises(ExportError, match=r"already exists; choose another out or pass force=True") as refused:
        export_weights(model, tmp_path / "w", "bin")  # Python words the arguments, the CLI its options
    assert "choose another --out or pass --force" in refused.value.cli_message()
    export_weights(model, tmp_path / "w", "bin", force=True)
    assert (tmp_path / "w" / "manifest.json").is_file() and not (tmp_path / "w" / "model.npz").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.txt").write_text("my work")  # not an export: --force must not replace it
    with pytest.raises(ExportError, match="^force=True replaces only an earlier export"):
        export_weights(model, tmp_path / "mine", "npz", force=True)
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["thesis.txt"]


def test_an_unwritable_output_folder_is_refused_before_any_work(tiny_cfg, tmp_path, monkeypatch):
    """No file can be made where the export goes (here: mkstemp refused, as for a read-only folder or /proc)."""
    from ssdlab import files

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(files.tempfile, "mkstemp", refuse)
    with pytest.raises(ExportError, match=r"^out .*new: cannot write into .* \(Permission denied\); choose another"):
        export_weights(build_model(tiny_cfg()).eval(), tmp_path / "new", "npz")
    assert list(tmp_path.iterdir()) == []


def test_export_cli_errors_are_one_line(tiny_cfg, tmp_path):
    path = tmp_path / "m.pt"
    save_checkpoint(make_checkpoint(build_model(tiny_cfg())), path)
    (tmp_path / "exists").mkdir()
    for args, message in [(["--ckpt", str(path), "--out", str(tmp_path / "exists")], "--force"),
                          (["--ckpt", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "x")], "does not exist")]:
        done = subprocess.run([sys.executable, "-m", "ssdlab", "export", *args], capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr
    done = subprocess.run([sys.executable, "-m", "ssdlab", "export", "--ckpt", str(path), "--out",
                           str(tmp_path / "txt"), "--format", "txt"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    text = (tmp_path / "txt" / "model_weights.txt").read_text()
    assert text.startswith("# backbone.module_list.0.conv.weight shape=[16, 3, 3, 3] layer=0")
