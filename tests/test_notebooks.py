"""The course notebooks as committed: no outputs, one parameters cell, the Goals -> Summary shape.

nbval runs each notebook itself (`make test` collects notebooks/ with --nbval-lax, smoke profile).
"""
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
