"""One exception family for everything a user can get wrong."""
from __future__ import annotations

import re

STOPPED = 130  # the CLI's exit status when Ctrl-C stopped a command (128 + SIGINT), so `train && eval` does not go on

# torch re-raises an error of a DataLoader worker as "Caught X in DataLoader worker process N.\nOriginal Traceback ..."
_WORKER = re.compile(r"Caught \w+ in DataLoader worker process \d+\.\nOriginal Traceback", re.ASCII)


class SSDLabError(Exception):
    """Base class: a message that names the file (line or key), the problem and the fix.

    A message may name a request's arguments by markers ({percent}, {--format}, ...): str(err) words them as the
    Python arguments (PYTHON), cli_message() as the command's options (CLI).
    """

    PYTHON: dict[str, str] = {}
    CLI: dict[str, str] = {}

    def __init__(self, message: str = ""):
        if _WORKER.match(message):  # keep the worker's own one-line message, not its traceback
            message = message.rstrip().rsplit(f"{type(self).__module__}.{type(self).__qualname__}: ", 1)[-1]
        self.template = message
        super().__init__(_worded(message, self.PYTHON))

    def cli_message(self) -> str:
        """The message as the command line shows it."""
        return _worded(self.template, self.CLI)


class ConfigError(SSDLabError):
    """A YAML recipe or a KEY VALUE override is wrong."""

    PYTHON = {"{--ptq}": "ptq="}
    CLI = {"{--ptq}": "--ptq "}


class CfgError(SSDLabError):
    """A darknet-style backbone .cfg file is wrong."""


class DataError(SSDLabError):
    """A dataset file, folder, image or label is missing or malformed."""


class CheckpointError(SSDLabError):
    """A checkpoint is missing, not an ssdlab checkpoint, or does not match the model."""


class PruneError(SSDLabError):
    """A pruning request cannot be carried out (markers: ssdlab.prune_channels' arguments or prune's options)."""

    PYTHON = {"{percent}": "percent", "{mode}": "mode=", "{drop_levels}": "drop_levels=True"}
    CLI = {"{percent}": "--percent", "{mode}": "--mode ", "{drop_levels}": "--max 1"}


def _worded(template: str, words: dict[str, str]) -> str:
    """template with each marker replaced by its wording."""
    for marker, word in words.items():
        template = template.replace(marker, word)
    return template


class QuantError(SSDLabError):
    """A quantization setting is unknown or out of range."""


class ExportError(SSDLabError):
    """An export request cannot be carried out (format, folder, quantization; markers: ssdlab.export_model's
    arguments or export's options)."""

    PYTHON = {"{--format}": "fmt", "{--int8}": "int8=True", "{--force}": "force=True", "{--out}": "out", "{--name}": "name"}
    CLI = {"{--format}": "--format", "{--int8}": "--int8", "{--force}": "--force", "{--out}": "--out", "{--name}": "--name"}
