"""Time the whole course and write the times into the documents: each notebook's header and the README table.

    python scripts/course_times.py                 # run notebooks 00-07 in order in a fresh folder (full profile)
    python scripts/course_times.py --write-only    # rewrite the documents from the stored record

The run executes every notebook with nbclient in an empty folder, as a fresh clone would (data generated,
nothing trained yet), and stores one record in benchmarks/course_times.json: the date, git commit, machine,
CPU flags, profile and each notebook's seconds. The documents' timing lines are generated from that record
only, so no time is typed by hand (tests/test_course_times.py checks that they match it).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))  # results_md: the machine description the benchmarks use
NOTEBOOKS = sorted((ROOT / "notebooks").glob("0[0-7]_*.ipynb"))
RECORD = ROOT / "benchmarks" / "course_times.json"
README = ROOT / "README.md"
START, END = "<!-- course-times:start -->", "<!-- course-times:end -->"
HEADER = "Measured by `scripts/course_times.py`"


def run_course(profile: str) -> dict:
    """Execute every notebook in order in a fresh folder; the record of their times."""
    from nbclient import NotebookClient

    from ssdlab.engine.profile import cpu_flags
    from results_md import machine

    seconds = {}
    with tempfile.TemporaryDirectory(prefix="course-") as folder:
        os.environ["SSDLAB_PROFILE"] = profile
        for path in NOTEBOOKS:
            began = time.perf_counter()
            notebook = nbformat.read(path, as_version=4)
            NotebookClient(notebook, timeout=3600, kernel_name="python3", resources={"metadata": {"path": folder}}
                           ).execute()
            seconds[path.stem] = round(time.perf_counter() - began, 1)
            print(f"{path.stem}: {seconds[path.stem] / 60:.1f} min", flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return {"date": date.today().isoformat(), "commit": commit.stdout.strip(), "machine": machine(),
            "cpu_flags": cpu_flags(), "profile": profile, "seconds": seconds}


def duration(seconds: float) -> str:
    """'44 s' or '6.6 min'."""
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def header(record: dict, name: str) -> str:
    """The timing paragraph of one notebook's first cell."""
    return (f"{HEADER} on {record['date']} ({record['machine']}; CPU flags {record['cpu_flags']}): "
            f"{record['profile']} profile {duration(record['seconds'][name])}, run after the notebooks before it "
            f"in a fresh folder (all eight in order: {duration(sum(record['seconds'].values()))}); a later run "
            "reuses the runs it made. Smoke profile: well under a minute.")


def readme_section(record: dict) -> str:
    """The README's table of notebook times, between its markers."""
    rows = [f"| `{name}` | {duration(seconds)} |" for name, seconds in record["seconds"].items()]
    return "\n".join([START, f"| notebook | {record['profile']} profile, first run in a fresh folder |", "|---|---|",
                      *rows, "",
                      f"All eight in order: **{duration(sum(record['seconds'].values()))}** on {record['date']} "
                      f"({record['machine']}; CPU flags {record['cpu_flags']}; commit {record['commit']}), "
                      "measured by `python scripts/course_times.py`.", END])


def write_documents(record: dict) -> None:
    """Put the record's times into every notebook's first cell and into the README."""
    for path in NOTEBOOKS:
        notebook = nbformat.read(path, as_version=4)
        first = notebook.cells[0]
        kept = [p for p in first.source.split("\n\n") if not p.startswith(("Measured on", HEADER))]
        first.source = "\n\n".join([*kept, header(record, path.stem)])
        nbformat.write(notebook, path)
    text = README.read_text()
    README.write_text(text[:text.index(START)] + readme_section(record) + text[text.index(END) + len(END):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="full", choices=["full", "smoke"])
    parser.add_argument("--write-only", action="store_true", help="rewrite the documents from the stored record")
    args = parser.parse_args()
    if args.write_only:
        record = json.loads(RECORD.read_text())
    else:
        record = run_course(args.profile)
        RECORD.write_text(json.dumps(record, indent=1) + "\n")
    write_documents(record)
    print(f"{RECORD.relative_to(ROOT)}: {duration(sum(record['seconds'].values()))} in all; notebooks and README "
          "rewritten")


if __name__ == "__main__":
    main()
