"""The course's timing lines (each notebook's header, the README table) are generated from the stored run record
(benchmarks/course_times.json, written by scripts/course_times.py), never typed by hand."""
import importlib.util
import json
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("course_times", ROOT / "scripts" / "course_times.py")
course_times = importlib.util.module_from_spec(spec)
spec.loader.exec_module(course_times)


@pytest.fixture(scope="module")
def record() -> dict:
    return json.loads(course_times.RECORD.read_text())


def test_the_record_times_every_notebook(record):
    assert list(record["seconds"]) == [path.stem for path in course_times.NOTEBOOKS]
    assert all(seconds > 0 for seconds in record["seconds"].values())
    assert record["profile"] == "full" and record["cpu_flags"]


@pytest.mark.parametrize("path", course_times.NOTEBOOKS, ids=lambda p: p.stem)
def test_each_notebook_header_is_the_generated_one(path, record):
    paragraphs = nbformat.read(path, as_version=4).cells[0].source.split("\n\n")
    assert paragraphs[-1] == course_times.header(record, path.stem)
    assert not any(p.startswith("Measured on") for p in paragraphs)  # no hand-typed timing left


def test_the_readme_table_is_the_generated_one(record):
    text = course_times.README.read_text()
    section = text[text.index(course_times.START):text.index(course_times.END) + len(course_times.END)]
    assert section == course_times.readme_section(record)


def test_durations_read_naturally():
    assert course_times.duration(44.4) == "44 s" and course_times.duration(396) == "6.6 min"
