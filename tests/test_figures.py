"""No measured figure is typed into the README, benchmarks/RESULTS.md or the course notebooks' prose: they point to
a generated section (RESULTS.md, the course-times table) or to what a cell prints. Worked examples of formulas
are not measurements."""
import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
MEASURED = {  # what a typed-in measurement looks like
    "an mAP or AP": r"\b0\.[4-9]\d{3}\b|(?:mAP|AP)\D{0,30}\b0\.\d{2,3}\b",
    "a latency": r"\b\d+(\.\d+)? ?ms\b",
    "a speed-up or ratio": r"\b\d\.\d+ ?[×x](?!\w)",
    "an mAP change in points": r"[−+-]\d+\.\d+ points?\b",
}


def typed_figures(text: str) -> list[str]:
    """Each match of MEASURED in text outside generated sections (<!-- name:start --> ... <!-- name:end -->)."""
    text = re.sub(r"<!-- ([\w-]+):start -->.*?<!-- \1:end -->", "", text, flags=re.S)
    return [f"{what}: {m.group(0)!r} in {text[max(0, m.start() - 50):m.end() + 10]!r}"
            for what, pattern in MEASURED.items() for m in re.finditer(pattern, text)]


def test_the_checker_finds_a_typed_figure_and_skips_generated_sections():
    text = "mAP 0.9045 at 3.77 ms, 2.3× faster (−1.2 points), AP about 0.61\n<!-- t:start -->0.9045 3 ms<!-- t:end -->"
    assert len(typed_figures(text)) == 5 and typed_figures(text.split("\n")[1]) == []
    assert typed_figures("a rescale of 0.0123; 32×32 priors; ONNX Runtime int8 ms") == []


@pytest.mark.parametrize("document", ["README.md", "benchmarks/RESULTS.md"])
def test_the_readme_and_results_type_in_no_measured_figure(document):
    """RESULTS.md's figures all lie in sections generated from records; the README points to them."""
    assert typed_figures((ROOT / document).read_text()) == []


@pytest.mark.parametrize("path", sorted((ROOT / "notebooks").glob("0*.ipynb")), ids=lambda p: p.stem)
def test_notebook_prose_types_in_no_measured_figure(path):
    cells = nbformat.read(path, as_version=4).cells
    found = [f"cell {i}: {hit}" for i, cell in enumerate(cells) if cell.cell_type == "markdown"
             for hit in typed_figures(cell.source)]
    assert found == []
