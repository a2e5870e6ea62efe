"""The public API (`ssdlab.evaluate/prune_channels/quantize/export_model`): each step gives what its library function gives."""
import json
from pathlib import Path

import pytest
import torch

import ssdlab
from ssdlab.course import baseline
from ssdlab.data.catalog import build_dataset
from ssdlab.data.transforms import build_transforms
from ssdlab.engine.inference import evaluate_model
from ssdlab.errors import ConfigError
from ssdlab.prune.surgery import make_plan
from tests.conftest import TESTS

RECIPE = TESTS.parent / "ssdlab" / "configs" / "course" / "plain_quant.yaml"


@pytest.fixture(scope="module")
def plain():
    return ssdlab.load(baseline("plain"))


@pytest.fixture(scope="module")
def val(shapes_dir, plain):
    return build_dataset([f"{shapes_dir}:val"], False, transform=build_transforms(plain.cfg, False))


def data_overrides(shapes_dir) -> list[str]:
    return ["DATASETS.TRAIN", f"['{shapes_dir}:train']", "DATASETS.TEST", f"['{shapes_dir}:val']"]


def test_evaluate_is_the_library_evaluation(plain, val):
    got = ssdlab.evaluate(plain, val)
    assert got["voc_map"] == evaluate_model(plain, val, plain.cfg)["voc_map"] and 0 < got["voc_map"] <= 1


def test_prune_writes_the_compact_model_of_the_plan(plain, val, tmp_path):
    report = ssdlab.prune_channels(baseline("plain"), 0.3, out=tmp_path, tag="p03", quick=True, dataset=val)
    plan = make_plan(plain, 0.3)
    assert report.plan.mode == "normal" and report.plan.params_after == plan.params_after
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p03.cfg", "p03.pt", "p03.txt"]
    compact = ssdlab.load(tmp_path / "p03.pt")
    assert sum(p.numel() for p in compact.parameters()) == plan.params_after
    assert report.rows[-1]["voc_map"] == pytest.approx(ssdlab.evaluate(compact, val)["voc_map"])


def test_quantize_calibrates_with_ptq_and_refuses_a_float_recipe(shapes_dir, tmp_path):
    overrides = [*data_overrides(shapes_dir), "OUTPUT_DIR", str(tmp_path / "ptq")]
    result = ssdlab.quantize(RECIPE, baseline("plain"), overrides, ptq=16)
    model = ssdlab.load(result.checkpoint)
    assert model.quant_spec.kind == "IAO" and 0 < result.metrics["voc_map"] <= 1
    assert torch.load(result.checkpoint, weights_only=False)["calibration_images"] == 16
    again = ssdlab.quantize(RECIPE, baseline("plain"), overrides, ptq=16)
    assert again.reused and again.checkpoint == result.checkpoint
    with pytest.raises(ConfigError, match="QUANTIZATION.TYPE no"):
        ssdlab.quantize(RECIPE, baseline("plain"), [*overrides, "QUANTIZATION.TYPE", "no"])


def test_ptq_of_a_recipe_file_goes_beside_its_qat_run_as_the_cli_does(shapes_dir, tmp_path, monkeypatch, capsys):
    """Without an OUTPUT_DIR override the PTQ run of a recipe file is <OUTPUT_DIR>_ptq<N>, from Python as from the CLI;
    asking for more calibration images than the training set has says how many were used."""
    from ssdlab.__main__ import main

    monkeypatch.chdir(tmp_path)
    result = ssdlab.quantize(RECIPE, baseline("plain"), data_overrides(shapes_dir), ptq=16)
    assert result.checkpoint == Path("runs/plain_quant_ptq16/model_final.pt") and not Path("runs/plain_quant").exists()
    assert main(["quantize", "--ptq", "500", "--ckpt", str(baseline("plain")), "--config-file", str(RECIPE),
                 *data_overrides(shapes_dir)]) == 0
    assert "on 160 calibration images (--ptq 500, but the training set has only 160)" in capsys.readouterr().out
    assert Path("runs/plain_quant_ptq500/model_final.pt").is_file()


def test_export_names_the_files_after_the_checkpoint(plain, tmp_path):
    folder = ssdlab.export_model(baseline("plain"), tmp_path / "bin")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert (folder / "plain_shapes_weights.bin").is_file() and manifest["tensors"]
    onnx = ssdlab.export_model(plain, tmp_path / "onnx", "onnx", name="plain")
    assert (onnx / "plain.onnx").is_file()
    with pytest.raises(ssdlab.SSDLabError, match="already exists"):
        ssdlab.export_model(plain, tmp_path / "onnx", "onnx")
    assert torch.is_tensor(plain.priors)


def test_wrong_arguments_name_the_argument_before_any_work(tmp_path, monkeypatch):
    """A model where a path goes, a string for a number, overrides as one string: one message saying what to give,
    and a prune request is checked before its dataset is built (a typo costs no data generation)."""
    from ssdlab.errors import CheckpointError, PruneError

    model = ssdlab.load(baseline("plain"))
    with pytest.raises(CheckpointError, match="a checkpoint is named by its path .* not SSD; a model in memory"):
        ssdlab.prune_channels(model, 0.5)
    with pytest.raises(CheckpointError, match="not int"):
        ssdlab.load(5)
    monkeypatch.setattr("ssdlab.data.catalog.datasets", lambda *a, **k: pytest.fail("the dataset was built"))
    with pytest.raises(PruneError, match=r"^percent '0.5' is not a number; give the fraction"):
        ssdlab.prune_channels(baseline("plain"), "0.5")
    with pytest.raises(PruneError, match=r"^percent 1.2 is outside \[0, 1\)"):
        ssdlab.prune_channels(baseline("plain"), 1.2)
    with pytest.raises(PruneError, match="prune mode 'nrmal' is unknown"):
        ssdlab.prune_channels(baseline("plain"), 0.5, mode="nrmal")
    with pytest.raises(ConfigError, match=r"overrides=.*give a list of strings"):
        ssdlab.quantize(RECIPE, baseline("plain"), "SOLVER.MAX_ITER 2")
    with pytest.raises(ConfigError, match=r"ptq=.*as an int .* not '8'"):
        ssdlab.quantize(RECIPE, baseline("plain"), ptq="8")
    with pytest.raises(ConfigError, match=r"export_model\(out=\.\.\.\): give the folder to create as a str or Path, not 7"):
        ssdlab.export_model(baseline("plain"), 7)
    with pytest.raises(ConfigError, match=r"evaluate\(model\): give an SSD or the path of its checkpoint, not int"):
        ssdlab.evaluate(3)


def test_evaluate_takes_a_checkpoint_path_and_a_dataset_name(shapes_dir, plain, val):
    expected = ssdlab.evaluate(plain, val)["voc_map"]
    assert ssdlab.evaluate(baseline("plain"), f"{shapes_dir}:val")["voc_map"] == pytest.approx(expected)
