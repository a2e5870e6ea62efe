"""Trainer: loss goes down, hooks run where promised, resume is exact, checkpoints are safe."""
import json
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch

import ssdlab
from ssdlab import course
from ssdlab.config import load_config
from ssdlab.engine import checkpoint as ckpt
from ssdlab.engine.plugins import AfterBackward, Plugin
from ssdlab.engine.schedule import WarmupSchedule, build_optimizer
from ssdlab.engine.train import read_metrics, train
from ssdlab.errors import CheckpointError, ConfigError


def read_log(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_short_training_lowers_the_loss(tiny_cfg):
    cfg = tiny_cfg("SOLVER.MAX_ITER", "60", "SOLVER.LR_STEPS", "[50]", "SOLVER.LOG_PERIOD", "5")
    result = train(cfg, progress=False)
    assert result.finished and result.iteration == 60
    losses = [r["loss"] for r in read_metrics(cfg.OUTPUT_DIR, "loss")]
    assert len(losses) == 12 and read_metrics(result.checkpoint, "loss")[-1]["iter"] == 60
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3
    assert 0.0 <= result.metrics["voc_map"] <= 1.0 and "area" in result.metrics["voc_metric"]
    log = (Path(cfg.OUTPUT_DIR) / "metrics.jsonl").read_text()
    again = train(cfg, progress=False)  # a finished run is reused as it is: same metrics, nothing re-logged
    assert again.checkpoint == result.checkpoint and again.metrics["voc_map"] == result.metrics["voc_map"]
    assert again.train_seconds == pytest.approx(result.train_seconds)
    assert (Path(cfg.OUTPUT_DIR) / "metrics.jsonl").read_text() == log


def test_read_metrics_keeps_the_last_record_per_iteration(tmp_path):
    lines = [{"iter": 5, "loss": 2.0}, {"iter": 5, "loss": 1.5}, {"iter": 10, "voc_map": 0.4}, {"iter": 10, "loss": 1.0}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert read_metrics(tmp_path, "loss") == [{"iter": 5, "loss": 1.5}, {"iter": 10, "loss": 1.0}]
    assert read_metrics(tmp_path / "model_final.pt", "voc_map") == [{"iter": 10, "voc_map": 0.4}]
    with pytest.raises(FileNotFoundError, match="not a training run"):
        read_metrics(tmp_path / "elsewhere" / "model_final.pt")


@pytest.mark.parametrize("name", ["SGD", "AdamW"])
def test_fused_optimizer_makes_the_reference_update(name):
    torch.manual_seed(0)
    cfg = load_config(None, ["SOLVER.OPTIMIZER", name, "SOLVER.LR", "0.01"])
    fused, plain = torch.nn.Linear(8, 4), torch.nn.Linear(8, 4)
    plain.load_state_dict(fused.state_dict())
    reference = {"SGD": lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9, weight_decay=5e-4),
                 "AdamW": lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=5e-4)}[name](plain.parameters())
    optimizers = [(fused, build_optimizer(cfg, fused)), (plain, reference)]
    assert optimizers[0][1].defaults["fused"]
    for _ in range(20):
        x = torch.randn(5, 8)
        for model, optimizer in optimizers:
            optimizer.zero_grad()
            model(x).pow(2).sum().backward()
            optimizer.step()
    for a, b in zip(fused.parameters(), plain.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_warmup_multistep_factors_by_hand():
    schedule = WarmupSchedule("multistep", max_iter=100, steps=[50, 80], gamma=0.1,
                              warmup_factor=1 / 3, warmup_iters=10)
    assert schedule(0) == pytest.approx(1 / 3)
    assert schedule(5) == pytest.approx(1 / 3 * 0.5 + 0.5)
    assert schedule(10) == pytest.approx(1.0)
    assert schedule(49) == pytest.approx(1.0)
    assert schedule(50) == pytest.approx(0.1)
    assert schedule(80) == pytest.approx(0.01)
    cosine = WarmupSchedule("cosine", 100, [], 0.1, 1.0, 0)
    assert cosine(50) == pytest.approx(0.5) and cosine(100) == pytest.approx(0.0)


def test_interrupt_then_resume_gives_identical_weights(tiny_cfg):
    straight = train(tiny_cfg("SOLVER.MAX_ITER", "10", out="straight"), progress=False)

    def ctrl_c_at_4(_model, iteration):
        if iteration == 4:
            os.kill(os.getpid(), signal.SIGINT)

    cfg = tiny_cfg("SOLVER.MAX_ITER", "10", out="resumed")
    first = train(cfg, plugins=[AfterBackward(ctrl_c_at_4)], progress=False)
    assert not first.finished and first.iteration == 5  # the iteration in flight completes, then it saves
    assert ckpt.last_checkpoint(cfg.OUTPUT_DIR) == first.checkpoint
    second = train(cfg, progress=False)
    assert second.finished and second.iteration == 10
    a = ckpt.read_checkpoint(straight.checkpoint)["model"]
    b = ckpt.read_checkpoint(second.checkpoint)["model"]
    assert same_weights(a, b)
    iters = [r["iter"] for r in read_log(Path(cfg.OUTPUT_DIR) / "metrics.jsonl") if "loss" in r]
    assert iters == sorted(set(iters))  # the resumed run did not log an iteration twice


def test_a_run_of_other_settings_is_not_reused_or_resumed(tiny_cfg):
    first = train(tiny_cfg("SOLVER.MAX_ITER", "2", "DATASETS.TEST", "[]"), progress=False)
    # logging, checkpointing and test settings may change between a run and its resume
    again = train(tiny_cfg("SOLVER.MAX_ITER", "2", "DATASETS.TEST", "[]", "SOLVER.LOG_PERIOD", "7"), progress=False)
    assert again.checkpoint == first.checkpoint and again.finished
    changed = tiny_cfg("SOLVER.MAX_ITER", "2", "DATASETS.TEST", "[]", "MODEL.THRESHOLD", "0.4")
    with pytest.raises(CheckpointError, match=r"MODEL.THRESHOLD: 0.5 -> 0.4.*--fresh"):
        train(changed, progress=False)
    with pytest.raises(CheckpointError, match=r"SOLVER.MAX_ITER: 2 -> 3.*MODEL.FINE_TUNE True"):  # a longer schedule too
        train(tiny_cfg("SOLVER.MAX_ITER", "3", "DATASETS.TEST", "[]"), progress=False)
    fresh = train(changed, resume=False, progress=False)
    assert ckpt.read_checkpoint(fresh.checkpoint)["config"]["MODEL"]["THRESHOLD"] == 0.4
    # the course starts over by itself when its recipe changed
    assert course.run_changed(tiny_cfg("SOLVER.MAX_ITER", "2", "DATASETS.TEST", "[]"))
    redone = course.train_recipe(tiny_cfg("SOLVER.MAX_ITER", "2", "DATASETS.TEST", "[]"))
    assert ckpt.read_checkpoint(redone.checkpoint)["config"]["MODEL"]["THRESHOLD"] == 0.5


def test_a_fine_tuned_run_with_the_starts_architecture_is_reused(tiny_cfg):
    base = train(tiny_cfg("SOLVER.MAX_ITER", "1", "DATASETS.TEST", "[]", "MODEL.PRIORS.MIN_SIZES", "[12, 28]",
                          out="base"), progress=False)
    # the run takes MODEL.PRIORS from its start (architecture_config), not from the recipe it was given
    tune = tiny_cfg("SOLVER.MAX_ITER", "1", "DATASETS.TEST", "[]", "MODEL.FINE_TUNE", "True",
                    "MODEL.WEIGHTS", str(base.checkpoint), out="tune")
    first = train(tune, progress=False)
    assert ckpt.read_checkpoint(first.checkpoint)["config"]["MODEL"]["PRIORS"]["MIN_SIZES"] == [12, 28]
    assert not course.run_changed(tune)
    assert train(tune, progress=False).checkpoint == first.checkpoint
    # the start retrained in place (same path, other weights): the run is not reused
    other = train(tiny_cfg("SOLVER.MAX_ITER", "1", "DATASETS.TEST", "[]", "MODEL.PRIORS.MIN_SIZES", "[12, 28]",
                           "SOLVER.SEED", "7", out="other"), progress=False)
    shutil.copy(other.checkpoint, base.checkpoint)
    assert course.run_changed(tune)
    with pytest.raises(CheckpointError, match=r"MODEL.WEIGHTS: .*model_final.pt holds other weights"):
        train(tune, progress=False)


def test_after_backward_runs_before_the_optimizer_step(tiny_cfg):
    cfg = tiny_cfg("SOLVER.MAX_ITER", "3", "SOLVER.WEIGHT_DECAY", "0.0", "SOLVER.OPTIMIZER", "SGD",
                   "DATASETS.TEST", "[]")
    torch.manual_seed(0)
    calls = []

    def zero_grads(model, iteration):
        calls.append(iteration)
        assert all(p.grad is not None for p in model.backbone.parameters())
        for p in model.parameters():
            p.grad = torch.zeros_like(p)

    result = train(cfg, plugins=[AfterBackward(zero_grads)], progress=False)
    assert calls == [0, 1, 2]
    trained = ckpt.read_checkpoint(result.checkpoint)["model"]
    ssdlab.seed_everything(cfg.SOLVER.SEED)
    fresh = ssdlab.build_model(cfg).state_dict()
    params = {n for n, _ in ssdlab.build_model(cfg).named_parameters()}
    assert all(torch.equal(trained[k], fresh[k]) for k in params)


def test_a_plugins_setup_changes_the_model_before_training(tiny_cfg):
    cfg = tiny_cfg("SOLVER.MAX_ITER", "3", "DATASETS.TEST", "[]")

    class FreezeBackbone(Plugin):
        def setup(self, model, device):
            for p in model.backbone.parameters():
                p.requires_grad_(False)

    result = train(cfg, plugins=[FreezeBackbone()], progress=False)
    ssdlab.seed_everything(cfg.SOLVER.SEED)
    fresh = ssdlab.build_model(cfg).state_dict()
    trained = ckpt.read_checkpoint(result.checkpoint)["model"]
    conv = "backbone.module_list.0.conv.weight"
    head = next(k for k in fresh if k.startswith("box_head") and k.endswith("weight"))
    assert torch.equal(trained[conv], fresh[conv]) and not torch.equal(trained[head], fresh[head])


def test_checkpoint_rebuilds_its_model(tiny_cfg):
    cfg = tiny_cfg("SOLVER.MAX_ITER", "2")
    result = train(cfg, progress=False)
    raw = torch.load(result.checkpoint, weights_only=True)
    assert raw["format"] == "ssdlab-checkpoint" and "[convolutional]" in raw["cfg_text"]
    assert raw["class_names"][0] == "__background__" and len(raw["class_names"]) == 6
    model = ssdlab.load(result.checkpoint)
    assert not model.training
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        dets = model(images)
    assert len(dets) == 2 and set(dets[0]) == {"boxes", "labels", "scores"}


def test_fine_tune_starts_from_weights_at_iteration_zero(tiny_cfg):
    base = train(tiny_cfg("SOLVER.MAX_ITER", "3", out="base"), progress=False)
    cfg = tiny_cfg("SOLVER.MAX_ITER", "2", "MODEL.FINE_TUNE", "True", "MODEL.WEIGHTS", str(base.checkpoint),
                   "SOLVER.LR", "1e-30", "SOLVER.WEIGHT_DECAY", "0.0", out="tuned")
    tuned = train(cfg, progress=False)
    assert tuned.iteration == 2
    a = ckpt.read_checkpoint(base.checkpoint)["model"]
    b = ckpt.read_checkpoint(tuned.checkpoint)["model"]
    params = {n for n, _ in ssdlab.load(base.checkpoint).named_parameters()}
    assert all(torch.allclose(a[k], b[k], rtol=0, atol=1e-20) for k in params)  # lr ~0: the loaded weights


def test_not_an_ssdlab_checkpoint(tmp_path):
    path = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(CheckpointError, match="not an ssdlab checkpoint"):
        ssdlab.load(path)
    (tmp_path / "garbage.pt").write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="garbage.pt is not a readable ssdlab checkpoint") as err:
        ssdlab.load(tmp_path / "garbage.pt")
    assert "weights_only" not in str(err.value)  # torch's own text advises unsafe loading
    with pytest.raises(CheckpointError, match="does not exist"):
        ssdlab.load(tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="is a folder"):
        ssdlab.load(tmp_path)
    with pytest.raises(CheckpointError, match="empty path"):
        ssdlab.load("")


def test_mismatched_checkpoint_names_tensor_and_shapes(tiny_cfg):
    result = train(tiny_cfg("SOLVER.MAX_ITER", "1", "DATASETS.TEST", "[]"), progress=False)
    state = ckpt.read_checkpoint(result.checkpoint)
    state["cfg_text"] = state["cfg_text"].replace("filters=48", "filters=40")
    with pytest.raises(CheckpointError) as err:
        ckpt.model_from_checkpoint(state, "edited.pt")
    message = str(err.value)
    assert "backbone.module_list.3" in message and "(48," in message and "(40," in message


def test_failed_write_keeps_the_last_good_checkpoint(tiny_cfg, monkeypatch):
    result = train(tiny_cfg("SOLVER.MAX_ITER", "1", "DATASETS.TEST", "[]"), progress=False)
    good = result.checkpoint.read_bytes()
    state = ckpt.read_checkpoint(result.checkpoint)

    def broken_save(obj, path):
        with open(path, "wb") as handle:
            handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        ckpt.save_checkpoint(state, result.checkpoint)
    assert result.checkpoint.read_bytes() == good
    assert not list(result.checkpoint.parent.glob("*.tmp"))


def test_num_classes_must_match_data(tiny_cfg):
    with pytest.raises(ConfigError, match="MODEL.NUM_CLASSES"):
        train(tiny_cfg("MODEL.NUM_CLASSES", "3"), progress=False)


def test_missing_dataset_path(tiny_cfg, tmp_path):
    from ssdlab.errors import DataError
    with pytest.raises(DataError, match="nowhere"):
        train(tiny_cfg("DATASETS.TRAIN", f"['{tmp_path}/nowhere.data']"), progress=False)


def test_release_copy_drops_resume_state_and_still_loads(tiny_cfg, tmp_path):
    result = train(tiny_cfg("SOLVER.MAX_ITER", "1", "DATASETS.TEST", "[]"), progress=False)
    small = ckpt.release_copy(result.checkpoint, tmp_path / "release.pt")
    state = ckpt.read_checkpoint(small)
    assert "optimizer" not in state and "rng" not in state
    assert small.stat().st_size < result.checkpoint.stat().st_size
    assert same_weights(state["model"], ckpt.read_checkpoint(result.checkpoint)["model"])
    ssdlab.load(small)


def test_zero_iterations_is_a_config_error(tiny_cfg):
    with pytest.raises(ConfigError, match="SOLVER.MAX_ITER"):
        train(tiny_cfg("SOLVER.MAX_ITER", "0", "SOLVER.SCHEDULER", "cosine"), progress=False)
