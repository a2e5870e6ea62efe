"""`make tour` in the smoke profile: every step runs and the summary names both course models and their quantized rows."""
import re

import pytest

from ssdlab.course import run_tour


@pytest.mark.slow
def test_smoke_tour_runs_every_step(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    summary = run_tour("smoke")
    rows = {line.split()[0]: line for line in summary.splitlines()[2:]}
    assert set(rows) == {f"{m}{step}" for m in ("plain", "residual")
                         for step in ("", "-sparse", "-pruned", "-quantized", "-pruned+q")}
    mib = {name: float(re.split(r"\s+", line)[3]) for name, line in rows.items()}
    for name in ("plain", "residual"):
        assert mib[f"{name}-quantized"] < 0.5 * mib[name]  # 8-bit weights where the cfg marks quantization=1
        assert mib[f"{name}-pruned+q"] < mib[f"{name}-quantized"] and mib[f"{name}-pruned+q"] < mib[f"{name}-pruned"]
        assert (tmp_path / "runs" / "smoke" / name / "model_final.pt").is_file()
        assert (tmp_path / "runs" / "smoke" / f"{name}_sparse" / "model_final.pt").is_file()
        assert len(list((tmp_path / "runs" / "smoke" / name / "demo").glob("*.png"))) == 4
        params = {step: int(re.split(r"\s+", rows[f"{name}{step}"])[1].replace(",", "")) for step in ("", "-pruned")}
        assert params["-pruned"] < params[""]
    for line in rows.values():
        assert 0.0 <= float(re.split(r"\s+", line)[5]) <= 1.0
