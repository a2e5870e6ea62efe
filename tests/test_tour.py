"""`make tour` in the smoke profile: every step runs and the summary names both course models."""
import re

import pytest

from ssdlab.course import run_tour


@pytest.mark.slow
def test_smoke_tour_runs_every_step(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    summary = run_tour("smoke")
    rows = {line.split()[0]: line for line in summary.splitlines()[2:]}
    assert set(rows) == {"plain", "residual"}
    for name in rows:
        assert (tmp_path / "runs" / "smoke" / name / "model_final.pt").is_file()
        assert len(list((tmp_path / "runs" / "smoke" / name / "demo").glob("*.png"))) == 4
        voc = float(re.split(r"\s+", rows[name])[5])
        assert 0.0 <= voc <= 1.0
