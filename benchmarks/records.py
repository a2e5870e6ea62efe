"""Benchmark records: one JSON line per result, with what produced it (commit, machine, CPU flags, digests)."""
from __future__ import annotations

import datetime
import hashlib
import json
import subprocess
from pathlib import Path
from typing import Callable

from results_md import ROOT, display, machine, write_section

from ssdlab.course import PROFILES
from ssdlab.engine import checkpoint as ckpt
from ssdlab.engine.profile import cpu_flags
from ssdlab.files import staged


RESULT_FILES = (":!benchmarks/*.json", ":!benchmarks/*.jsonl", ":!benchmarks/*.png", ":!benchmarks/RESULTS.md")


def git_commit() -> str:
    """The repository's HEAD commit (short), '+' when tracked files other than the benchmark results changed."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    changed = git("status", "--porcelain", "--untracked-files=no", "--", ".", *RESULT_FILES)
    return git("rev-parse", "--short", "HEAD") + ("+" if changed else "")


CONTEXT = ("experiment", "commit", "date", "profile", "machine", "cpu_flags")  # the fields of context()


def context(experiment: str, profile: str) -> dict:
    """The fields every record of one run shares: experiment, commit, date, profile, machine and CPU flags."""
    return {"experiment": experiment, "commit": git_commit(), "date": datetime.date.today().isoformat(),
            "profile": profile, "machine": machine(), "cpu_flags": cpu_flags()}


def measured_on(record: dict) -> str:
    """When, by which commit and on which machine a record was measured ('not recorded' for older records)."""
    if record.get("commit") is None:
        return f"not recorded (a record from before records carried the commit and CPU flags; {record['machine']})"
    return f"{record['date']}, commit {record['commit']}, {record['machine']}; CPU flags: {record['cpu_flags']}"


def measured(records: list[dict]) -> str:
    """Each distinct measured_on of the records, in order, joined by '; '."""
    return "; ".join(dict.fromkeys(measured_on(r) for r in records))


def data_profile(data: Path) -> str:
    """The course profile whose shapes folder is `data` ('custom' for any other folder)."""
    return next((name for name, p in PROFILES.items() if Path(p["data"]).resolve() == data.resolve()), "custom")


def config_digest(config: dict) -> str:
    """A short SHA-256 of a resolved config (its OUTPUT_DIR left out): equal only for the same settings."""
    settings = {key: value for key, value in config.items() if key != "OUTPUT_DIR"}
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def checkpoint_fields(path: str | Path) -> dict:
    """A checkpoint's repo-relative path, weights digest and config digest."""
    state = ckpt.read_checkpoint(path)
    return {"checkpoint": display(path), "weights_digest": ckpt.weights_digest(state),
            "config_digest": config_digest(state["config"])}


def write_records(records: list[dict], path: Path) -> None:
    """All records of a family as JSON lines (written whole: a failed run leaves the old file)."""
    with staged(path) as (temporary,):
        temporary.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def read_records(path: Path) -> list[dict]:
    """The records of a JSON-lines file ([] when it does not exist); a bad line names the file and line."""
    if not path.exists():
        return []
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{display(path)}, line {number}: not a JSON record ({err.msg}); "
                                 "rerun the family that writes it or restore the file from git") from None
    return records


def regenerate(render: Callable[[list[dict]], str], store: Path, results: Path, markers: tuple[str, str],
               before: tuple[str, ...] = ()) -> str:
    """A family's RESULTS.md section rendered from its stored records alone and written between its markers
    (a new section goes before the first of `before` found); the section."""
    section = render(read_records(store))
    write_section(section, results, *markers, before=before)
    return section
