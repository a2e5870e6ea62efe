"""Shared by the benchmark scripts: the machine description and RESULTS.md section rewriting."""
from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def machine() -> str:
    """CPU model, cores, torch version and Python version."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
               platform.processor())
    passive = (", OMP_WAIT_POLICY=PASSIVE (sleeping OpenMP threads: PyTorch latency above one thread is inflated; "
               "see benchmarks/NOTES.md)") if os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE" else ""
    return (f"{cpu}, {len(os.sched_getaffinity(0))} cores, torch {torch.__version__}, "
            f"Python {platform.python_version()}{passive}")


def display(path: str | Path) -> str:
    """A path relative to the repository when it lies inside it."""
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def write_section(section: str, path: Path, start: str, end: str, before: tuple[str, ...] = ()) -> None:
    """Replace the section between the start and end markers of RESULTS.md; a new section goes in front of
    the earliest of the `before` strings found (each starting with a newline, e.g. '\n## '), else at the end."""
    text = path.read_text() if path.exists() else "# ssdlab benchmark results\n"
    places = [text.index(b) + 1 for b in before if b in text]
    if start in text:
        text = text[:text.index(start)] + section + text[text.index(end) + len(end):]
    elif places:
        text = text[:min(places)] + section + "\n\n" + text[min(places):]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    path.write_text(text)
