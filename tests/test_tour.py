"""`make tour` in the smoke profile: every step runs, the summary names both course models, and the tour and the
notebooks share one set of runs (either order, one folder, nothing trained twice)."""
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from ssdlab.course import run_tour
from ssdlab.engine import checkpoint as ckpt

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("0[1-7]_*.ipynb"))
STEPS = ("-trained", "-baseline", "-sparse", "-pruned", "-quantized", "-pruned+q")


def summary_rows(summary: str) -> dict[str, list[str]]:
    """The tour's table rows by model name, split into cells."""
    return {line.split()[0]: re.split(r"\s+", line) for line in summary.splitlines()[2:]}


def finished_runs(root: Path) -> dict[str, int | str]:
    """Every finished run under root with its file's modification time (a run trained again is written again), and
    every pruned model with its weights (pruning is cheap and deterministic: notebook 04 prunes again for its report)."""
    runs = {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.glob("runs/smoke/*/model_final.pt")}
    pruned = {str(p.relative_to(root)): ckpt.weights_digest(ckpt.read_checkpoint(p))
              for p in root.glob("runs/smoke/*/model_final_*.pt")}
    return {**runs, **pruned}


@pytest.mark.slow
def test_smoke_tour_and_notebooks_share_their_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SSDLAB_PROFILE", "smoke")
    rows = summary_rows(run_tour("smoke"))
    assert set(rows) == {f"{m}{step}" for m in ("plain", "residual") for step in STEPS}
    mib = {name: float(cells[3]) for name, cells in rows.items()}
    for name in ("plain", "residual"):
        assert mib[f"{name}-quantized"] < 0.5 * mib[f"{name}-baseline"]  # 8-bit weights where the cfg marks them
        assert mib[f"{name}-pruned+q"] < mib[f"{name}-quantized"] and mib[f"{name}-pruned+q"] < mib[f"{name}-pruned"]
        assert len(list(tmp_path.glob(f"runs/smoke/{name}_12it-*/demo/*.png"))) == 4
        params = {step: int(rows[f"{name}{step}"][1].replace(",", "")) for step in ("-baseline", "-pruned")}
        assert params["-pruned"] < params["-baseline"]
        for step in ("-quantized", "-pruned+q"):  # int8 ONNX Runtime latency and its ratio to fp32
            ms, ratio = rows[f"{name}{step}"][5:7]
            assert float(ms) > 0 and ratio.endswith("x") and 0 < float(ratio[:-1]) < 10
    for cells in rows.values():
        assert 0.0 <= float(cells[7]) <= 1.0
    made = finished_runs(tmp_path)
    assert len(made) == 2 * 5  # per model: lesson run, sparse, pruned, two QAT runs

    for path in NOTEBOOKS:  # the notebooks after the tour, in the same folder: they reuse its runs
        notebook = nbformat.read(path, as_version=4)
        NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": tmp_path}}).execute()
    after = finished_runs(tmp_path)
    assert all(after[name] == stamp for name, stamp in made.items()), "a notebook trained or pruned a tour run again"
    assert summary_rows(run_tour("smoke")).keys() == rows.keys()  # and the tour after the notebooks reuses theirs
    assert finished_runs(tmp_path) == after
