"""The classroom assignments (notebooks/assignments/): nbgrader sources, released student versions, autograding.

The instructor (source) notebooks hold each solution between `### BEGIN SOLUTION` / `### END SOLUTION`,
a visible check cell and a hidden-tests cell per exercise. nbgrader (the `[classroom]` extra) runs in a
temporary course directory: `generate_assignment` must leave no solution or hidden code in the student
versions; their checks must fail as released and for trivial answers; autograding the instructor version
gives full points, and a wrong function loses exactly its exercise's points. nbval runs the instructor
notebooks themselves (smoke profile) with the rest of notebooks/.
"""
import os
import re
import shutil
from pathlib import Path

import nbformat
import pytest

pytest.importorskip("nbgrader", reason="nbgrader is not installed: pip install -e '.[classroom]'")

from nbgrader.api import Gradebook  # noqa: E402
from nbgrader.apps import NbGraderAPI  # noqa: E402
from traitlets.config import Config  # noqa: E402

ASSIGNMENTS = Path(__file__).resolve().parents[1] / "notebooks" / "assignments"
SOURCES = sorted(ASSIGNMENTS.glob("a[0-9]_*.ipynb"))
COURSE_ID = "ssdlab"
SOLUTION = re.compile(r"^(?P<indent>[ \t]*)### BEGIN SOLUTION\n.*?^[ \t]*### END SOLUTION[ \t]*$", re.S | re.M)
HIDDEN = re.compile(r"^[ \t]*### BEGIN HIDDEN TESTS\n(?P<body>.*?)^[ \t]*### END HIDDEN TESTS", re.S | re.M)

# plausible non-answers, one per function a student writes: each must fail its exercise's checks
TRIVIAL = {
    "prior_boxes": "return torch.zeros(feature_size ** 2 * (2 + 2 * len(ratios)), 4)",
    "match": "return torch.zeros(len(priors), dtype=torch.long), box_convert(priors, 'cxcywh', 'xyxy')",
    "encode": "return torch.zeros_like(boxes)",
    "add_l1_subgradient": "return None",
    "threshold_and_masks": "return 0.0, {layer: np.ones(len(g), dtype=bool) for layer, g in gammas.items()}",
    "compensation_offset": "return torch.zeros(weight.shape[0])",
    "dorefa_weight": "return w",
    "dorefa_activation": "return x",
    "iao_qparams": "return torch.ones_like(low), torch.zeros_like(low)",
    "iao_quantize": "return torch.round(x)",
    "iao_dequantize": "return q",
    "fuse_conv_bn": "return conv",
}
# a deliberately wrong function for the autograder: encode with the two variances swapped
BROKEN_ASSIGNMENT, BROKEN_FUNCTION = "a1_priors_matching", "encode"
BROKEN_BODY = """\
centre = (boxes[..., :2] + boxes[..., 2:]) / 2
size = boxes[..., 2:] - boxes[..., :2]
t_xy = (centre - priors[..., :2]) / priors[..., 2:] / size_variance
t_wh = torch.log(size / priors[..., 2:]) / center_variance
return torch.cat([t_xy, t_wh], dim=-1)"""


def nbgrader_meta(cell) -> dict:
    return cell.metadata.get("nbgrader", {})


def grade_cells(notebook) -> dict[str, object]:
    """grade_id -> cell, for the autograder test cells."""
    return {nbgrader_meta(c)["grade_id"]: c for c in notebook.cells if nbgrader_meta(c).get("grade")}


def solution_regions(source: str) -> list[tuple[str, re.Match]]:
    """(function name, match) for every solution region of a cell."""
    return [(re.findall(r"def (\w+)\(", source[:m.start()])[-1], m) for m in SOLUTION.finditer(source)]


def replace_solutions(notebook, bodies: dict[str, str]):
    """A copy of a notebook whose solution regions hold bodies[function] instead."""
    notebook = nbformat.from_dict(notebook)
    for cell in notebook.cells:
        if nbgrader_meta(cell).get("solution"):
            regions = solution_regions(cell.source)
            for name, m in reversed(regions):
                if name in bodies:
                    body = "\n".join(m["indent"] + line for line in bodies[name].splitlines())
                    cell.source = cell.source[:m.start()] + body + cell.source[m.end():]
    return notebook


def run_in_process(notebook) -> dict[str, BaseException | None]:
    """Run a notebook's nbgrader cells (setup, answers, tests) here: grade_id -> exception raised or None."""
    import torch

    namespace: dict = {"__name__": "__assignment__"}
    outcome = {}
    with torch.random.fork_rng():  # the cells seed torch: leave the other tests' random state alone
        for cell in notebook.cells:
            meta = nbgrader_meta(cell)
            if cell.cell_type != "code" or not meta:
                continue  # the ungraded "try it" cells need the answers; nbval and the autograder run them
            try:
                exec(compile(cell.source, meta["grade_id"], "exec"), namespace)
                outcome[meta["grade_id"]] = None
            except Exception as error:  # noqa: BLE001 - any failure of a check counts
                outcome[meta["grade_id"]] = error
    torch.set_printoptions(profile="default")
    return outcome


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    """A course directory with the sources under source/<assignment>/ and the student versions generated."""
    root = tmp_path_factory.mktemp("course")
    for path in SOURCES:
        (root / "source" / path.stem).mkdir(parents=True)
        shutil.copy(path, root / "source" / path.stem / path.name)
    config = Config()
    config.CourseDirectory.root = str(root)
    config.CourseDirectory.course_id = COURSE_ID
    api = NbGraderAPI(config=config)
    result = api.generate_assignment("*")
    assert result["success"], result.get("error") or result.get("log")
    return root, api


def released(root: Path, path: Path):
    return nbformat.read(root / "release" / path.stem / path.name, as_version=4)


def test_there_are_assignments():
    assert len(SOURCES) >= 3, "notebooks/assignments/ holds the classroom assignments"
    assert not any(re.match(r"[0-9][0-9]_", p.name) for p in SOURCES), "names must not look like course lessons"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.stem)
def test_sources_are_graded_exercises(path):
    notebook = nbformat.read(path, as_version=4)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), f"{path.name} has outputs"
    ids = [nbgrader_meta(c)["grade_id"] for c in notebook.cells if nbgrader_meta(c)]
    assert len(ids) == len(set(ids)), "grade_ids must be unique"
    profile = [c for c in code if "PROFILE = " in c.source]
    assert len(profile) == 1 and "NBGRADER_EXECUTION" in profile[0].source and nbgrader_meta(profile[0])["locked"]
    grades = grade_cells(notebook)
    answers = [c for c in code if nbgrader_meta(c).get("solution")]
    assert answers
    for answer in answers:
        names = [name for name, _ in solution_regions(answer.source)]
        assert names and set(names) <= set(TRIVIAL), f"{names}: add a trivial answer for every new function"
        exercise = nbgrader_meta(answer)["grade_id"]
        visible, hidden = grades[f"check_{exercise}"], grades[f"hidden_{exercise}"]
        assert code.index(visible) == code.index(answer) + 1, "the visible check follows the answer"
        assert visible.metadata.nbgrader.points > 0 and hidden.metadata.nbgrader.points > 0
        assert "BEGIN HIDDEN TESTS" not in visible.source and HIDDEN.search(hidden.source)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.stem)
def test_release_holds_no_solution_or_hidden_code(course, path):
    root, _ = course
    source, release = nbformat.read(path, as_version=4), released(root, path)
    text = "\n".join(c.source for c in release.cells)
    for marker in ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS"):
        assert marker not in text
    secret = set()
    for cell in source.cells:
        for _, m in solution_regions(cell.source):
            secret.update(m.group(0).splitlines()[1:-1])
        for m in HIDDEN.finditer(cell.source):
            secret.update(m["body"].splitlines())
    public = {line.strip() for c in source.cells for line in HIDDEN.sub("", SOLUTION.sub("", c.source)).splitlines()}
    secret = {line.strip() for line in secret if len(line.strip()) > 12 and not line.strip().startswith("#")} - public
    assert secret, "the source holds solution and hidden-test code to look for"
    lines = {line.strip() for line in text.splitlines()}
    assert not secret & lines, f"solution or hidden code in the student version: {sorted(secret & lines)[:3]}"
    regions = {nbgrader_meta(c)["grade_id"]: len(solution_regions(c.source)) for c in source.cells
               if nbgrader_meta(c).get("solution")}
    stubs = {nbgrader_meta(c)["grade_id"]: c.source.count("raise NotImplementedError()") for c in release.cells
             if nbgrader_meta(c).get("solution")}
    assert stubs == regions, "every solution becomes a stub that raises NotImplementedError"
    points = {k: c.metadata.nbgrader.points for k, c in grade_cells(source).items()}
    assert {k: c.metadata.nbgrader.points for k, c in grade_cells(release).items()} == points


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.stem)
def test_checks_fail_as_released_and_for_trivial_answers(course, path, monkeypatch):
    monkeypatch.setenv("NBGRADER_EXECUTION", "autograde")  # the smoke profile, as when grading
    root, _ = course
    source = nbformat.read(path, as_version=4)
    visible = [k for k in grade_cells(source) if k.startswith("check_")]
    outcome = run_in_process(released(root, path))  # the student version as handed out: stubs raise
    assert all(isinstance(outcome[k], NotImplementedError) for k in visible), outcome
    stubs = replace_solutions(source, {name: "raise NotImplementedError()" for name in TRIVIAL})
    trivial = replace_solutions(source, TRIVIAL)
    for answers in (stubs, trivial):  # with the hidden tests restored, as the autograder runs them
        outcome = run_in_process(answers)
        passed = [k for k in grade_cells(source) if outcome[k] is None]
        assert not passed, f"checks passed by a stub or a trivial answer: {passed}"


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Object of type")  # nbgrader 0.9 + SQLAlchemy 2 session notices
def test_autograde_full_points_and_a_wrong_function_loses_its_points(course):
    root, api = course
    for path in SOURCES:  # the instructor version handed in as a submission
        (root / "submitted" / "instructor" / path.stem).mkdir(parents=True)
        shutil.copy(path, root / "submitted" / "instructor" / path.stem / path.name)
    source = nbformat.read(ASSIGNMENTS / f"{BROKEN_ASSIGNMENT}.ipynb", as_version=4)
    (root / "submitted" / "broken" / BROKEN_ASSIGNMENT).mkdir(parents=True)
    nbformat.write(replace_solutions(source, {BROKEN_FUNCTION: BROKEN_BODY}),
                   root / "submitted" / "broken" / BROKEN_ASSIGNMENT / f"{BROKEN_ASSIGNMENT}.ipynb")
    result = api.autograde("*", "*")
    assert result["success"], result.get("error") or result.get("log")

    with Gradebook(f"sqlite:///{root / 'gradebook.db'}", COURSE_ID) as gradebook:
        for path in SOURCES:
            graded = gradebook.find_submission_notebook(path.stem, path.stem, "instructor")
            assert graded.max_score > 0 and graded.score == graded.max_score, \
                [(g.name, g.score, g.max_score) for g in graded.grades]
        graded = gradebook.find_submission_notebook(BROKEN_ASSIGNMENT, BROKEN_ASSIGNMENT, "broken")
        lost = {g.name: g.max_score - g.score for g in graded.grades if g.score < g.max_score}
        exercise = {f"check_{BROKEN_FUNCTION}", f"hidden_{BROKEN_FUNCTION}"}
        assert set(lost) == exercise, lost
        assert graded.score == graded.max_score - sum(g.max_score for g in graded.grades if g.name in exercise)
    assert os.path.exists(root / "autograded" / "broken" / BROKEN_ASSIGNMENT / f"{BROKEN_ASSIGNMENT}.ipynb")
