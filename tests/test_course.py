"""The course helpers that build recipes (QAT of each course model from its committed baseline) and name stages."""
import json
import re
import shutil

from ssdlab.engine import checkpoint as ckpt
from ssdlab.course import PROFILES, baseline, prepare_data, quant_config, sparse_config


def test_quant_config_scales_the_freeze_iterations_and_names_the_run():
    cfg = quant_config("dorefa", 4, 4, 500, "full")
    assert (cfg.QUANTIZATION.TYPE, cfg.QUANTIZATION.WBITS, cfg.QUANTIZATION.ABITS) == ("dorefa", 4, 4)
    assert cfg.SOLVER.MAX_ITER == 500 and cfg.SOLVER.WARMUP_ITERS == 20
    assert (cfg.QUANTIZATION.FREEZE_BN_ITER, cfg.QUANTIZATION.FREEZE_OBSERVER_ITER) == (400, 450)  # 80%, 90%
    assert cfg.MODEL.FINE_TUNE and cfg.MODEL.WEIGHTS == str(baseline("plain"))
    assert cfg.MODEL.BACKBONE.CFG.endswith("course_plain_quan.cfg") and cfg.SOLVER.LR == 0.0005  # plain_quant.yaml
    assert re.fullmatch(r"runs/plain_quant_dorefa_w4a4-[0-9a-f]{8}", cfg.OUTPUT_DIR)
    assert cfg.DATASETS.TEST == [f"{PROFILES['full']['data']}:val"]


def test_quant_config_of_the_residual_model_uses_its_own_recipe_and_baseline():
    cfg = quant_config("IAO", 8, 8, 500, "full", model="residual")
    assert cfg.MODEL.WEIGHTS == str(baseline("residual"))
    assert cfg.MODEL.BACKBONE.CFG.endswith("course_residual_quan.cfg")
    assert re.fullmatch(r"runs/residual_quant_iao_w8a8-[0-9a-f]{8}", cfg.OUTPUT_DIR)


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


def test_a_stage_folder_is_named_by_its_settings_and_its_starts_weights(tmp_path):
    """The same request is one folder wherever its start lies; another setting or other weights are another one."""
    same = sparse_config("plain", "smoke")
    assert re.fullmatch(r"runs/smoke/plain_sparse-[0-9a-f]{8}", same.OUTPUT_DIR)
    assert sparse_config("plain", "smoke").OUTPUT_DIR == same.OUTPUT_DIR
    copy = shutil.copy(baseline("plain"), tmp_path / "copy.pt")
    assert sparse_config("plain", "smoke", start=copy).OUTPUT_DIR == same.OUTPUT_DIR  # weights, not their path
    state = ckpt.read_checkpoint(copy)
    state["model"]["box_head.cls_headers.0.bias"] += 1.0
    other_weights = ckpt.save_checkpoint(state, tmp_path / "other.pt")
    assert sparse_config("plain", "smoke", start=other_weights).OUTPUT_DIR != same.OUTPUT_DIR
    other = {sparse_config("plain", "smoke", extra=["PRUNE.SR", "0.02"]).OUTPUT_DIR,
             sparse_config("plain", "full").OUTPUT_DIR, sparse_config("plain", "smoke", stage="mine").OUTPUT_DIR}
    assert len(other) == 3 and same.OUTPUT_DIR not in other
    assert sparse_config("plain", "smoke", extra=["SOLVER.LOG_PERIOD", "3"]).OUTPUT_DIR == same.OUTPUT_DIR  # logging
    assert sparse_config("plain", "smoke", extra=["OUTPUT_DIR", str(tmp_path)]).OUTPUT_DIR == str(tmp_path)


def test_shipped_backbone_cfgs_are_stored_as_package_paths():
    """So that checkpoints and digests are the same in every clone (the committed baselines included)."""
    assert sparse_config("plain", "smoke").MODEL.BACKBONE.CFG == "backbones/course_plain.cfg"
    for model in ("plain", "residual"):
        stored = ckpt.read_checkpoint(baseline(model))["config"]["MODEL"]["BACKBONE"]["CFG"]
        assert stored == f"backbones/course_{model}.cfg"
