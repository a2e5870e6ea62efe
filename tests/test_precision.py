"""SOLVER.PRECISION: which dtype a run trains in, and a bfloat16 step that stays float32 where it must."""
import logging
import os
import signal

import pytest
import torch

from ssdlab.config import load_config
from ssdlab.data.loader import make_train_loader
from ssdlab.engine import checkpoint as ckpt
from ssdlab.engine import precision
from ssdlab.engine.plugins import AfterBackward
from ssdlab.engine.precision import training_dtype
from ssdlab.engine.train import Trainer, train
from ssdlab.errors import ConfigError

CPU = torch.device("cpu")


@pytest.mark.parametrize("choice, native, quantized, expected", [
    ("fp32", True, False, torch.float32),
    ("bf16", False, False, torch.bfloat16),  # asked for: emulated where not native
    ("auto", True, False, torch.bfloat16),
    ("auto", False, False, torch.float32),
    ("auto", True, True, torch.float32),  # QAT stays float32
])
def test_training_dtype(monkeypatch, choice, native, quantized, expected):
    monkeypatch.setattr(precision, "native_bf16", lambda device: native)
    cfg = load_config(None, ["SOLVER.PRECISION", choice, "QUANTIZATION.TYPE", "IAO" if quantized else "no"])
    assert training_dtype(cfg, CPU) == expected


def test_bad_precision_settings_name_the_key():
    with pytest.raises(ConfigError, match="SOLVER.PRECISION = 'fp16' is unknown; use one of fp32, bf16, auto"):
        training_dtype(load_config(None, ["SOLVER.PRECISION", "fp16"]), CPU)
    with pytest.raises(ConfigError, match="cannot train a quantized model .*use fp32 or auto"):
        training_dtype(load_config(None, ["SOLVER.PRECISION", "bf16", "QUANTIZATION.TYPE", "dorefa"]), CPU)


def test_native_bf16_reads_the_cpu_flags(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert precision.native_bf16(CPU)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert not precision.native_bf16(CPU)


def first_batch(trainer: Trainer):
    """The first training batch of the trainer's loader."""
    images, targets, _ = next(iter(make_train_loader(trainer.cfg, trainer.train_set)))
    return images, targets


def test_bf16_step_computes_convs_in_bf16_and_keeps_float32_state(tiny_cfg):
    trainers = {}
    for choice in ("fp32", "bf16"):
        trainer = Trainer(tiny_cfg("SOLVER.PRECISION", choice, out=choice), resume=False, progress=False)
        trainer.setup()
        trainers[choice] = trainer
    images, targets = first_batch(trainers["fp32"])
    seen = []
    conv = next(m for m in trainers["bf16"].model.modules() if isinstance(m, torch.nn.Conv2d))
    conv.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    losses = {choice: t.step(images, targets, 0) for choice, t in trainers.items()}
    assert seen == [torch.bfloat16]
    model = trainers["bf16"].model
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in model.parameters() if p.grad is not None)
    assert all(s.dtype == torch.float32 for group in trainers["bf16"].optimizer.state.values()
               for s in group.values() if s.is_floating_point() and s.dim())
    # the same weights and batch: bfloat16's 8-bit mantissa moves the loss by well under 5%
    assert losses["bf16"]["loss"] == pytest.approx(losses["fp32"]["loss"], rel=0.05)


def test_bf16_run_saves_float32_weights_and_resumes_exactly(tiny_cfg, caplog):
    settings = ("SOLVER.PRECISION", "bf16", "SOLVER.MAX_ITER", "6", "DATASETS.TEST", "[]")
    with caplog.at_level(logging.INFO, logger="ssdlab.engine.train"):
        straight = train(tiny_cfg(*settings, out="straight"), progress=False)
    assert "training in bfloat16 (SOLVER.PRECISION bf16)" in caplog.text

    def ctrl_c_at_2(_model, iteration):
        if iteration == 2:
            os.kill(os.getpid(), signal.SIGINT)

    cfg = tiny_cfg(*settings, out="resumed")
    assert not train(cfg, plugins=[AfterBackward(ctrl_c_at_2)], progress=False).finished
    resumed = train(cfg, progress=False)
    a = ckpt.read_checkpoint(straight.checkpoint)["model"]
    b = ckpt.read_checkpoint(resumed.checkpoint)["model"]
    assert all(t.dtype != torch.bfloat16 for t in a.values())
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
