"""Shared fixtures: a small shapes dataset generated once per test session."""
from pathlib import Path

import pytest

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
