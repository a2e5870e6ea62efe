"""Reading the files a user hands in and checking where outputs go: one clear error, before any work."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from ssdlab.errors import SSDLabError


def read_text(path: Path, error: type[SSDLabError], what: str) -> str:
    """A UTF-8 text file; `error` naming the file when it is binary (FileNotFoundError is the caller's)."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise error(f"{path} is not a text file (byte {err.start} is not UTF-8); give {what}") from None
    except IsADirectoryError:
        raise error(f"{path} is a folder; give {what}") from None


def load_tensors(path: Path, error: type[SSDLabError], what: str) -> Any:
    """torch.load(weights_only=True) on the CPU; `error` naming the file when torch cannot or will not read it."""
    import torch  # here, so that reading a recipe does not import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a foreign, corrupt or unsafe file; never repeat its advice
        raise error(f"{path} is not a readable {what}: the file is damaged, cut short, not written by torch, or "
                    f"holds objects other than tensors, which ssdlab never loads ({type(err).__name__})") from None


def check_output_folder(path: Path | None, option: str, error: type[SSDLabError], replaced: bool = False) -> None:
    """`error` before any work when an output folder is an existing file (or lies below one), or when no file can
    be made in it (or in the nearest folder above it that exists; replaced: the folder is made beside it and
    renamed into place, staged_folder, so in the folder that holds it)."""
    if path is None:
        return
    real = Path(path).resolve()
    for folder in (real, *real.parents):
        if folder.exists() and not folder.is_dir():
            below = "" if folder == real else f" (inside {folder}, which is a file)"
            raise error(f"{option} {path} cannot be a folder{below}: {folder} is an existing file; "
                        "give a folder path, or move the file away")
        if folder.is_dir():
            check_writable(folder.parent if replaced and folder == real else folder, f"{option} {path}", error)
            return


def check_writable(folder: Path, what: str, error: type[SSDLabError]) -> None:
    """`error` naming `what` when a file cannot be created in `folder` (tried with a temporary file)."""
    try:
        handle, name = tempfile.mkstemp(dir=folder, prefix=".ssdlab-write-test.")
    except OSError as err:
        raise error(f"{what}: cannot write into {folder} ({err.strerror}); choose another folder, "
                    "or make that one writable") from None
    os.close(handle)
    os.unlink(name)


def check_file_stem(name: str, option: str, error: type[SSDLabError]) -> None:
    """`error` unless name is a plain file name (no folder part, not '.' or '..'), so outputs stay in their folder."""
    if not name or name in (".", "..") or Path(name).name != name or "\\" in name:
        raise error(f"{option} {name!r} must be a plain file name without a folder part (e.g. 'model'); "
                    "choose the folder with --out")


@contextmanager
def staged(*targets: Path) -> Iterator[list[Path]]:
    """Temporary files beside the targets to write in the block; renamed onto the targets only when the block
    ends without error (all of them, with ordinary permissions), removed otherwise: never a half-written file."""
    temps: list[Path] = []
    made = _missing_folders(Path(target).parent for target in targets)
    done = False
    try:
        for target in targets:
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            handle, name = tempfile.mkstemp(dir=Path(target).parent, prefix=f".{Path(target).name}.", suffix=".tmp")
            os.close(handle)
            temps.append(Path(name))
        yield temps
        mask = os.umask(0)
        os.umask(mask)
        for temp, target in zip(temps, targets):
            os.chmod(temp, 0o666 & ~mask)  # mkstemp makes 0600; a file made with open() gets 0666 minus the umask
            os.replace(temp, target)
        done = True
    finally:
        for temp in temps:
            temp.unlink(missing_ok=True)
        for folder in [] if done else sorted(made, key=lambda f: len(f.parts), reverse=True):
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()  # a folder made only to hold the temporary files goes too


def _missing_folders(folders) -> set[Path]:
    """Every folder (and missing parent) among `folders` that does not exist yet."""
    missing = set()
    for folder in folders:
        while not folder.exists() and folder not in missing:
            missing.add(folder)
            folder = folder.parent
    return missing


def write_json(data, path: str | Path) -> None:
    """Write JSON through a temporary file next to path (staged): never half a file."""
    with staged(Path(path)) as (temp,):
        temp.write_text(json.dumps(data))


@contextmanager
def staged_folder(out: Path) -> Iterator[Path]:
    """A temporary folder beside `out` to fill in the block; it replaces `out` (an existing one is removed) only when
    the block ends without error, and is removed otherwise: never a half-written folder."""
    out = Path(out).resolve()  # '.' or 'a/..' renamed by their real names
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        os.chmod(work, 0o755)  # mkdtemp makes it private; outputs are meant to be shared
        yield work
        old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-")) if out.exists() else None
        if old is not None:
            out.rename(old / out.name)
        work.rename(out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
