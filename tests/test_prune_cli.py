"""Pruning as a user runs it: the prune command, fine-tuning (with distillation), the sensitivity scan."""
import json
import math
from pathlib import Path
import subprocess
import sys

import pytest
import torch

import ssdlab
from ssdlab.api import prune_channels
from ssdlab.data.catalog import datasets
from ssdlab.engine import checkpoint as ckpt
from ssdlab.engine.profile import count_macs, count_params
from ssdlab.engine.train import train
from ssdlab.errors import PruneError
from ssdlab.model.ssd import SSD
from ssdlab.prune.distill import distillation_losses
from ssdlab.prune.report import prune_checkpoint
from ssdlab.prune.sensitivity import sensitivity_scan
from ssdlab.prune.plan import ModelSpec, plan
from ssdlab.prune.surgery import make_budget_plan, make_plan, plan_gammas
from tests.conftest import TESTS


def ssdlab_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "ssdlab", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def sparse_run(shapes_dir, tmp_path_factory):
    """A tiny model sparse-trained for a few iterations (its checkpoint and config)."""
    from ssdlab.config import load_config

    out = tmp_path_factory.mktemp("sparse")
    cfg = load_config(TESTS / "data" / "tiny.yaml",
                      ["DATASETS.TRAIN", f"['{shapes_dir}:train']", "DATASETS.TEST", f"['{shapes_dir}:val']",
                       "OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", "12", "PRUNE.TYPE", "normal", "PRUNE.SR", "0.05"])
    return train(cfg, progress=False).checkpoint, cfg


def safe_percent(path, wanted: float) -> float:
    """wanted, or just under the highest ratio that empties no layer: 12 iterations leave that ratio to chance."""
    highest = make_plan(ckpt.load(path), 0.0).highest_safe
    return min(wanted, math.floor(100 * highest) / 100 - 0.01)


def test_prune_cli_writes_compact_model_cfg_and_report(sparse_run, tmp_path):
    path, cfg = sparse_run
    percent = safe_percent(path, 0.5)
    done = ssdlab_cli("prune", "--ckpt", str(path), "--percent", str(percent), "--regular", "1", "--out",
                      str(tmp_path), "--tag", "half", "--quick", "1", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["half.cfg", "half.pt", "half.txt"]
    report = (tmp_path / "half.txt").read_text()
    for row in ("original", "masked preview", "zeroed, no compensation", "compensated (masked)", "compact"):
        assert row in report and row in done.stdout
    compact = ckpt.load(tmp_path / "half.pt")
    original = ckpt.load(path)
    params = int(report.split("compact", 1)[1].split()[0].replace(",", ""))
    assert params == count_params(compact) < count_params(original)
    widths = [layer["filters"] for layer in compact.backbone.defs]
    assert all(w % 8 == 0 or w == full for w, full in zip(widths, [16, 32, 32, 48]))
    assert (tmp_path / "half.cfg").read_text() == compact.cfg_text
    stored = torch.load(tmp_path / "half.pt", weights_only=True)
    assert stored["prune"]["percent"] == percent and stored["prune"]["regular"] is True
    assert "compression (params)" in report and "highest safe percent" in report


def test_prune_cli_meets_a_macs_budget_at_the_smallest_percent(sparse_run, tmp_path):
    path, _ = sparse_run
    model = ckpt.load(path)
    expected = make_budget_plan(model, 0.8, "normal")
    assert expected.macs_after <= 0.8 * expected.macs_before and expected.percent > 0
    done = ssdlab_cli("prune", "--ckpt", str(path), "--macs", "0.8", "--out", str(tmp_path), "--tag", "budget",
                      "--quick", "1", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"MACs budget 0.8: percent {expected.percent:.4f}, which keeps" in done.stdout
    stored = torch.load(tmp_path / "budget.pt", weights_only=True)
    assert stored["prune"]["percent"] == pytest.approx(expected.percent)
    compact = ckpt.load(tmp_path / "budget.pt")
    assert count_macs(compact, 64) <= 0.8 * count_macs(model, 64)  # tiny.yaml's 64 px input, measured on the model
    below = plan(ModelSpec.from_model(model), plan_gammas(model), expected.percent - 1e-3)
    assert below.macs_after > 0.8 * below.macs_before  # one channel fewer pruned: over the budget
    both = ssdlab_cli("prune", "--ckpt", str(path), "--macs", "0.8", "--percent", "0.3", cwd=tmp_path)
    assert both.returncode == 2 and "not allowed with argument" in both.stderr
    for share in ("0", "1.5"):
        bad = ssdlab_cli("prune", "--ckpt", str(path), "--macs", share, "--out", str(tmp_path / "x"), cwd=tmp_path)
        assert bad.returncode == 2 and "outside (0, 1); give the share of the MACs to keep" in bad.stderr
        assert "Traceback" not in bad.stderr and not (tmp_path / "x").exists()


def test_the_python_api_prunes_to_a_macs_budget_as_the_cli_does(sparse_run, tmp_path):
    path, cfg = sparse_run
    expected = make_budget_plan(ckpt.load(path), 0.8, "normal")
    report = prune_channels(path, None, "normal", cfg, quick=True, out=tmp_path, tag="api", macs=0.8)
    assert report.plan.percent == expected.percent and report.plan.kept.keys() == expected.kept.keys()
    assert all((report.plan.kept[i] == expected.kept[i]).all() for i in expected.kept)
    assert report.text.splitlines()[1].startswith(f"MACs budget 0.8: percent {expected.percent:.4f}")
    assert torch.load(tmp_path / "api.pt", weights_only=True)["prune"]["macs_budget"] == 0.8
    for percent, macs in ((0.3, 0.8), (None, None)):
        with pytest.raises(PruneError, match="give exactly one of percent"):
            prune_channels(path, percent, "normal", cfg, quick=True, out=tmp_path / "x", macs=macs)
    assert not (tmp_path / "x").exists()


def test_pruned_model_fine_tunes_with_distillation(sparse_run, tmp_path):
    path, cfg = sparse_run
    report = prune_checkpoint(path, cfg, safe_percent(path, 0.4), out_dir=tmp_path, tag="p40",
                              dataset=datasets(cfg, False))
    assert report.rows[-1]["voc_map"] == pytest.approx(report.rows[3]["voc_map"], abs=1e-6)  # compact = compensated
    tune = cfg.clone()
    tune.MODEL.FINE_TUNE, tune.MODEL.WEIGHTS = True, str(tmp_path / "p40.pt")
    tune.DISTILL.TEACHER, tune.OUTPUT_DIR = str(path), str(tmp_path / "tune")
    tune.SOLVER.MAX_ITER, tune.PRUNE.TYPE = 4, "no"
    result = train(tune.freeze(), progress=False)
    tuned = ckpt.load(result.checkpoint)
    assert [layer["filters"] for layer in tuned.backbone.defs] == [len(report.plan.kept_out(i)) for i in range(4)]
    logged = [json.loads(line) for line in (tmp_path / "tune" / "metrics.jsonl").read_text().splitlines()]
    assert any("distill_cls" in r and "distill_box" in r for r in logged)


def test_distillation_losses_by_hand(tiny_cfg):
    cfg = tiny_cfg("DISTILL.TEMPERATURE", "2.0", "DISTILL.CLS_WEIGHT", "1.0", "DISTILL.BOX_WEIGHT", "0.5")
    logits = torch.tensor([[[0.0, 0.0], [1.0, 0.0]]])
    teacher = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [5.0, 5.0]]])  # one extra prior: a dropped level
    boxes, teacher_boxes = torch.zeros(1, 2, 4), torch.tensor([[[1.0, 0, 0, 0], [0, 2.0, 0, 0], [9.0, 9, 9, 9]]])
    labels = torch.tensor([[0, 1]])
    same = distillation_losses(logits, boxes, labels, teacher, teacher_boxes, cfg)
    assert same["distill_cls"].item() == pytest.approx(0.0, abs=1e-7)
    assert same["distill_box"].item() == pytest.approx(0.5 * 4.0)  # only the positive prior: (0-2)^2, weight 0.5
    shifted = torch.tensor([[[2.0, 0.0], [1.0, 0.0], [0.0, 0.0]]])
    out = distillation_losses(logits, boxes, labels, shifted, teacher_boxes, cfg)
    p = torch.softmax(torch.tensor([1.0, 0.0]), 0)  # teacher at T=2 on prior 0; student uniform
    kl = (p * (p / 0.5).log()).sum().item()
    assert out["distill_cls"].item() == pytest.approx(kl / 2 * 4, rel=1e-5)  # mean over 2 priors, times T^2


def test_sensitivity_scan_rows(sparse_run):
    path, cfg = sparse_run
    model = ckpt.load(path)
    dataset = datasets(cfg, False)
    rows = sensitivity_scan(model, dataset, cfg, ratios=(0.0, 0.75), progress=False)
    assert [(r["layer"], r["ratio"]) for r in rows] == [(i, r) for i in range(4) for r in (0.0, 0.75)]
    for r in rows:
        assert r["kept"] == max(1, round(r["width"] * (1 - r["ratio"])))
        if r["ratio"] == 0.0:
            assert r["drop"] == pytest.approx(0.0, abs=1e-9)  # nothing pruned: the original model


NO_BN = (TESTS / "data" / "tiny.cfg").read_text().replace("batch_normalize=1", "batch_normalize=0")


@pytest.mark.parametrize("args, message", [
    (["--percent", "1.0"], "--percent 1.0 is outside [0, 1)"),
    (["--percent", "-0.1"], "--percent -0.1 is outside [0, 1)"),
    (["--percent", "0.999"], "highest safe ratio"),
])
def test_bad_prune_requests_write_nothing(sparse_run, tmp_path, args, message):
    path, _ = sparse_run
    out = tmp_path / "out"
    done = ssdlab_cli("prune", "--ckpt", str(path), "--out", str(out), "--quick", "1", *args, cwd=tmp_path)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr
    assert not out.exists() or not any(out.iterdir())


def test_prune_errors_name_the_python_arguments_in_python_and_the_options_on_the_command_line(sparse_run, tmp_path):
    path, _ = sparse_run
    with pytest.raises(PruneError) as raised:
        ssdlab.prune_channels(path, 0.999, quick=True, out=tmp_path / "p")
    python, cli = str(raised.value), raised.value.cli_message()
    assert "Lower percent to at most" in python and "pass drop_levels=True" in python and "--" not in python
    assert "Lower --percent to at most" in cli and "pass --max 1" in cli and "{" not in cli
    with pytest.raises(PruneError, match=r"^percent 1.5 is outside \[0, 1\)"):
        ssdlab.prune_channels(path, 1.5, quick=True, out=tmp_path / "p")


def test_no_prunable_layers_and_not_sparse_are_explained(tiny_cfg, tmp_path):
    cfg = tiny_cfg()
    no_bn = tmp_path / "no_bn.pt"
    ckpt.save_checkpoint(ckpt.make_checkpoint(SSD(cfg, cfg_text=NO_BN)), no_bn)
    done = ssdlab_cli("prune", "--ckpt", str(no_bn), "--percent", "0.3", "--out", str(tmp_path / "o"), cwd=tmp_path)
    assert done.returncode == 2 and "no channels prunable" in done.stderr
    assert not (tmp_path / "o").exists()
    dense = tmp_path / "dense.pt"
    ckpt.save_checkpoint(ckpt.make_checkpoint(SSD(cfg)), dense)
    done = ssdlab_cli("prune", "--ckpt", str(dense), "--percent", "0.3", "--quick", "1", "--out",
                      str(tmp_path / "d"), cwd=tmp_path)  # the stored config names the test data
    assert done.returncode == 0, done.stderr[-2000:]
    assert "was not sparse-trained" in done.stdout and "accuracy will collapse" in done.stdout


def test_a_model_with_dropped_levels_fine_tunes(sparse_run, tmp_path):
    path, cfg = sparse_run
    model = ckpt.load(path)
    with torch.no_grad():
        model.backbone.module_list[3].bn.weight.fill_(1e-6)  # the last level's layer learned nothing
    dead = tmp_path / "dead_level.pt"
    state = ckpt.make_checkpoint(model)
    state["config"]["PRUNE"]["TYPE"] = "normal"
    ckpt.save_checkpoint(state, dead)
    report = prune_checkpoint(dead, cfg, 0.5, drop_levels=True, quick=True, out_dir=tmp_path, tag="max",
                              dataset=datasets(cfg, False))
    assert report.plan.levels == 1 and len(report.model.priors) == 8 * 8 * 4
    tune = cfg.clone()
    tune.MODEL.FINE_TUNE, tune.MODEL.WEIGHTS = True, str(report.files["checkpoint"])
    tune.OUTPUT_DIR, tune.SOLVER.MAX_ITER, tune.PRUNE.TYPE = str(tmp_path / "tune"), 2, "no"
    result = train(tune.freeze(), progress=False)  # targets are built for the pruned model's priors
    assert result.finished and len(ckpt.load(result.checkpoint).priors) == 256


def test_the_default_tag_names_every_setting_that_shapes_the_plan(sparse_run):
    """Two prunes of one checkpoint at one percent but another GAMMA_SCALE or ROUND_TO never share a file name."""
    from ssdlab.prune.report import default_tag

    path, cfg = sparse_run
    result = make_plan(ckpt.load(path), 0.1)
    tags = set()
    for scale, round_to, regular, drop in [("global", 8, False, False), ("layer", 8, False, False),
                                           ("global", 8, True, False), ("global", 16, True, True),
                                           ("layer", 16, True, False)]:
        prune = cfg.PRUNE.clone()
        prune.GAMMA_SCALE, prune.ROUND_TO = scale, round_to
        tags.add(default_tag(Path(path), result, regular, drop, prune))
    stem = f"{Path(path).stem}_normal_p0.1"
    assert tags == {stem, f"{stem}_layer", f"{stem}_regular", f"{stem}_regular16_max", f"{stem}_regular16_layer"}
