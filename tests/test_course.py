"""The course helpers that build recipes: QAT of each course model from its committed baseline."""
import json

from ssdlab.course import PROFILES, baseline, prepare_data, quant_config


def test_quant_config_scales_the_freeze_iterations_and_names_the_run():
    cfg = quant_config("dorefa", 4, 4, 500, "full")
    assert (cfg.QUANTIZATION.TYPE, cfg.QUANTIZATION.WBITS, cfg.QUANTIZATION.ABITS) == ("dorefa", 4, 4)
    assert cfg.SOLVER.MAX_ITER == 500 and cfg.SOLVER.WARMUP_ITERS == 20
    assert (cfg.QUANTIZATION.FREEZE_BN_ITER, cfg.QUANTIZATION.FREEZE_OBSERVER_ITER) == (400, 450)  # 80%, 90%
    assert cfg.MODEL.FINE_TUNE and cfg.MODEL.WEIGHTS == str(baseline("plain"))
    assert cfg.MODEL.BACKBONE.CFG.endswith("course_plain_quan.cfg") and cfg.SOLVER.LR == 0.0005  # plain_quant.yaml
    assert cfg.OUTPUT_DIR == "runs/plain_quant_dorefa_w4a4"
    assert cfg.DATASETS.TEST == [f"{PROFILES['full']['data']}:val"]


def test_quant_config_of_the_residual_model_uses_its_own_recipe_and_baseline():
    cfg = quant_config("IAO", 8, 8, 500, "full", model="residual")
    assert cfg.MODEL.WEIGHTS == str(baseline("residual"))
    assert cfg.MODEL.BACKBONE.CFG.endswith("course_residual_quan.cfg")
    assert cfg.MODEL.BACKBONE.OUT_CHANNELS == [64, 64, 128, 128, 128, 128]
    assert cfg.OUTPUT_DIR == "runs/residual_quant_iao_w8a8"


def test_quant_config_in_the_smoke_profile_and_with_overrides(tmp_path):
    cfg = quant_config("BWN", 2, 32, 4, "smoke", start=tmp_path / "pruned.pt",
                       extra=["QUANTIZATION.FINAL", "True", "OUTPUT_DIR", str(tmp_path / "out")])
    assert cfg.SOLVER.MAX_ITER == 4 and cfg.SOLVER.WARMUP_ITERS == 1 and cfg.SOLVER.BATCH_SIZE == 8
    assert (cfg.QUANTIZATION.FREEZE_BN_ITER, cfg.QUANTIZATION.FREEZE_OBSERVER_ITER) == (3, 3)
    assert cfg.MODEL.WEIGHTS == str(tmp_path / "pruned.pt") and cfg.QUANTIZATION.FINAL
    assert cfg.OUTPUT_DIR == str(tmp_path / "out")
    assert cfg.DATASETS.TRAIN == ["runs/smoke/shapes:train"]


def test_prepare_data_generates_the_profile_split_once(tmp_path, monkeypatch):
    monkeypatch.setitem(PROFILES, "smoke", {**PROFILES["smoke"], "data": str(tmp_path / "shapes"), "train": 6, "val": 2})
    root = prepare_data("smoke")
    manifest = json.loads((root / "MANIFEST.json").read_text())
    assert root == tmp_path / "shapes" and (manifest["n_train"], manifest["n_val"]) == (6, 2)
    stamp = (root / "MANIFEST.json").stat().st_mtime_ns
    assert prepare_data("smoke") == root and (root / "MANIFEST.json").stat().st_mtime_ns == stamp  # reused
