"""The course notebooks as committed: no outputs, one parameters cell, the Goals -> Summary shape.

nbval runs each notebook itself (`make test` collects notebooks/ with --nbval-lax, smoke profile).
"""
import re
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_without_outputs_and_with_a_profile_cell(path):
    notebook = nbformat.read(path, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(not cell.outputs and cell.execution_count is None for cell in code), f"{path.name} has outputs"
    assert sum('PROFILE = os.environ.get("SSDLAB_PROFILE", "full")' in cell.source for cell in code) == 1
    markdown = [cell.source for cell in notebook.cells if cell.cell_type == "markdown"]
    assert "**Goals**" in markdown[0] and "Summary" in markdown[-1] and "Exercises" in markdown[-1]


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ holds no course notebook"


# a measured figure: an mAP or AP (0.9045), a speed-up (1.2×), a latency (3.1 ms)
FIGURE = re.compile(r"(?:mAP|AP)\D{0,30}\b0\.\d{2,4}\b|\b\d+\.\d+\s?×|\b\d+(?:\.\d+)?\s?ms\b")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_prose_types_no_measured_figure(path):
    """mAPs and speed-ups come from the cells' own output (or benchmarks/RESULTS.md), never typed into the prose,
    where they go stale when a baseline is retrained or the machine changes."""
    notebook = nbformat.read(path, as_version=4)
    typed = [match.group(0) for cell in notebook.cells if cell.cell_type == "markdown"
             for match in FIGURE.finditer(cell.source)]
    assert not typed, f"{path.name} types {typed} by hand; print it from a cell instead"
