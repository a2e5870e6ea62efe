"""Shared fixtures: a small shapes dataset generated once per test session, a calibrated IAO course model."""
from pathlib import Path

import pytest

import torch

from ssdlab.config import load_config

TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory) -> Path:
    """A 160-train / 24-val shapes dataset (all three on-disk formats)."""
    from ssdlab.data.shapes import generate_shapes

    return generate_shapes(tmp_path_factory.mktemp("data") / "shapes", n_train=160, n_val=24, seed=3, workers=1)


@pytest.fixture
def tiny_cfg(shapes_dir, tmp_path):
    """A factory for the tiny recipe on the session shapes set, writing into tmp_path."""
    def make(*overrides, out="out"):
        return load_config(TESTS / "data" / "tiny.yaml",
                           ["DATASETS.TRAIN", f"['{shapes_dir}:train']", "DATASETS.TEST", f"['{shapes_dir}:val']",
                            "OUTPUT_DIR", str(tmp_path / out), *overrides])
    return make


def calibrated(shapes_dir: Path, *overrides: str):
    """The committed plain baseline as an IAO W8A8 model, ranges calibrated on 48 training images: (model, cfg, val)."""
    from ssdlab.course import baseline
    from ssdlab.data.catalog import build_dataset, datasets
    from ssdlab.data.transforms import build_transforms
    from ssdlab.engine.train import architecture_config, initial_model
    from ssdlab.quant.apply import calibrate

    cfg = load_config(TESTS.parent / "ssdlab" / "configs" / "course" / "plain_quant.yaml",
                      ["MODEL.WEIGHTS", str(baseline("plain")), "DATASETS.TRAIN", f"['{shapes_dir}:train']",
                       "DATASETS.TEST", f"['{shapes_dir}:val']", *overrides])
    cfg = architecture_config(cfg)
    val = datasets(cfg, is_train=False)
    model = initial_model(cfg, val.class_names)
    train = build_dataset(cfg.DATASETS.TRAIN, False, transform=build_transforms(cfg, False))
    batches = (torch.stack([train[i][0] for i in range(start, start + 16)]) for start in range(0, 48, 16))
    return calibrate(model, batches), cfg, val


@pytest.fixture(scope="session")
def calibrated_course_model(shapes_dir):
    """The committed plain baseline as an IAO W8A8 model (heads too), ranges calibrated on training images."""
    return calibrated(shapes_dir, "QUANTIZATION.FINAL", "True")


@pytest.fixture(scope="session")
def all_int8_course_model(shapes_dir):
    """As calibrated_course_model on course_plain_int8.cfg (the input layer quantized too): every conv quantized."""
    return calibrated(shapes_dir, "QUANTIZATION.FINAL", "True", "MODEL.BACKBONE.CFG", "course_plain_int8.cfg")
