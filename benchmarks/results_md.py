"""Shared by the benchmark scripts: the machine description and RESULTS.md section rewriting."""
from __future__ import annotations

import os
import platform
from pathlib import Path

import torch


def machine() -> str:
    """CPU model, cores, torch version and Python version."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
               platform.processor())
    return f"{cpu}, {len(os.sched_getaffinity(0))} cores, torch {torch.__version__}, Python {platform.python_version()}"


def write_section(section: str, path: Path, start: str, end: str) -> None:
    """Replace (or append) the section between the start and end markers of RESULTS.md."""
    text = path.read_text() if path.exists() else "# ssdlab benchmark results\n"
    if start in text:
        text = text[:text.index(start)] + section + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    path.write_text(text)
