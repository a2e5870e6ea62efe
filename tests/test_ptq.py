"""Post-training quantization: ranges observed by hand, the CLI run and its reuse, refusals, the int8 graph it gives."""
import pytest
import torch

import ssdlab
from ssdlab.__main__ import main
from ssdlab.config import load_config
from ssdlab.course import baseline
from ssdlab.engine import checkpoint as ckpt
from ssdlab.errors import CheckpointError, QuantError
from ssdlab.quant.layers import IAOConvBN
from ssdlab.quant.ptq import calibration_batches, post_training_quantize
from tests.conftest import TESTS

RECIPE = TESTS.parent / "ssdlab" / "configs" / "course" / "plain_quant.yaml"


@pytest.fixture
def ptq_cfg(shapes_dir, tmp_path):
    """The course QAT recipe from the committed plain baseline on the session shapes set (heads quantized too)."""
    def make(*overrides):
        return load_config(RECIPE, ["MODEL.WEIGHTS", str(baseline("plain")), "QUANTIZATION.FINAL", "True",
                                    "DATASETS.TRAIN", f"['{shapes_dir}:train']", "DATASETS.TEST",
                                    f"['{shapes_dir}:val']", "OUTPUT_DIR", str(tmp_path / "ptq"), *overrides])
    return make


def test_ranges_are_the_running_extremes_of_the_calibration_images(ptq_cfg):
    cfg = ptq_cfg("TEST.BATCH_SIZE", "100")  # one batch of 32 images: the first batch sets the range itself
    result = post_training_quantize(cfg, images=32)
    model, start = ssdlab.load(result.checkpoint), ssdlab.load(baseline("plain")).eval()
    from ssdlab.data.catalog import build_dataset
    from ssdlab.data.transforms import build_transforms

    train = build_dataset(cfg.DATASETS.TRAIN, False, transform=build_transforms(cfg, False))
    images = next(calibration_batches(train, 32, 100, cfg.SOLVER.SEED))
    seen = {}
    start.backbone.module_list[0].register_forward_hook(lambda _m, _i, out: seen.setdefault("layer0", out))
    with torch.no_grad():
        start.forward_raw(images)
    observer = model.backbone.module_list[1].act_quant  # layer 1 reads layer 0's float output
    assert float(observer.high) == pytest.approx(float(seen["layer0"].max()), rel=1e-5)
    assert float(observer.low) == pytest.approx(float(seen["layer0"].min()), abs=1e-6)
    layer = model.backbone.module_list[3]
    assert isinstance(layer, IAOConvBN)
    assert torch.equal(layer.conv.weight, start.backbone.module_list[3].conv.weight)  # no training: same weights
    assert torch.equal(layer.bn.running_mean, start.backbone.module_list[3].bn.running_mean)  # BN statistics kept
    assert 0.0 < result.metrics["voc_map"] <= 1.0


def test_the_cli_writes_beside_the_recipes_output_and_reuses_it(ptq_cfg, tmp_path, capsys, monkeypatch):
    """runs/plain_quant (the recipe's OUTPUT_DIR) + _ptq48, so it never meets the QAT run."""
    monkeypatch.chdir(tmp_path)
    cfg = ptq_cfg()
    args = ["quantize", "--ptq", "48", "--ckpt", str(baseline("plain")), "--config-file", str(RECIPE),
            "DATASETS.TRAIN", str(list(cfg.DATASETS.TRAIN)), "DATASETS.TEST", str(list(cfg.DATASETS.TEST))]
    assert main(args) == 0
    out = capsys.readouterr().out
    final = tmp_path / "runs" / "plain_quant_ptq48" / "model_final.pt"
    assert "48 calibration images done" in out and str(final.relative_to(tmp_path)) in out
    state = ckpt.read_checkpoint(final)
    assert state["calibration_images"] == 48 and state["start"] == ckpt.weights_digest(ckpt.read_checkpoint(
        baseline("plain")))
    digest = ckpt.weights_digest(state)
    assert main(args) == 0
    assert "reused" in capsys.readouterr().out and ckpt.weights_digest(ckpt.read_checkpoint(final)) == digest


def test_refusals_name_what_to_do(ptq_cfg):
    with pytest.raises(QuantError, match="QUANTIZATION.TYPE IAO"):
        post_training_quantize(ptq_cfg("QUANTIZATION.TYPE", "dorefa"))
    post_training_quantize(ptq_cfg(), images=16)
    with pytest.raises(CheckpointError, match="calibrated on 16 images, not 32"):
        post_training_quantize(ptq_cfg(), images=32)
    assert post_training_quantize(ptq_cfg(), images=32, resume=False).checkpoint.is_file()


def test_ptq_gives_the_same_int8_graph_as_qat(ptq_cfg, tmp_path):
    pytest.importorskip("onnxruntime")
    from ssdlab.export.runtime import optimized_ops
    from ssdlab.export.weights import export_weights

    model = ssdlab.load(post_training_quantize(ptq_cfg(), images=32).checkpoint)
    path = export_weights(model, tmp_path / "int8", "onnx", name="ptq") / "ptq.onnx"
    assert optimized_ops(path).count("QLinearConv") == 20  # every conv but the float input layer
