"""One exception family for everything a user can get wrong."""
from __future__ import annotations

import re

STOPPED = 130  # the CLI's exit status when Ctrl-C stopped a command (128 + SIGINT), so `train && eval` does not go on

# torch re-raises an error of a DataLoader worker as "Caught X in DataLoader worker process N.\nOriginal Traceback ..."
_WORKER = re.compile(r"Caught \w+ in DataLoader worker process \d+\.\nOriginal Traceback", re.ASCII)


class SSDLabError(Exception):
    """Base class: a message that names the file (line or key), the problem and the fix."""

    def __init__(self, message: str = ""):
        if _WORKER.match(message):  # keep the worker's own one-line message, not its traceback
            message = message.rstrip().rsplit(f"{type(self).__module__}.{type(self).__qualname__}: ", 1)[-1]
        super().__init__(message)

    def cli_message(self) -> str:
        """The message as the command line shows it."""
        return str(self)


class ConfigError(SSDLabError):
    """A YAML recipe or a KEY VALUE override is wrong."""


class CfgError(SSDLabError):
    """A darknet-style backbone .cfg file is wrong."""


class DataError(SSDLabError):
    """A dataset file, folder, image or label is missing or malformed."""


class CheckpointError(SSDLabError):
    """A checkpoint is missing, not an ssdlab checkpoint, or does not match the model."""


class PruneError(SSDLabError):
    """A pruning request cannot be carried out.

    Its message names the request's arguments by markers ({percent}, {mode}, {drop_levels}): worded as the
    Python arguments of ssdlab.prune_channels in str(err), as the prune command's options in cli_message().
    """

    PYTHON = {"{percent}": "percent", "{mode}": "mode=", "{drop_levels}": "drop_levels=True"}
    CLI = {"{percent}": "--percent", "{mode}": "--mode ", "{drop_levels}": "--max 1"}

    def __init__(self, message: str = ""):
        self.template = message
        super().__init__(_worded(message, self.PYTHON))

    def cli_message(self) -> str:
        """The message naming --percent, --mode and --max 1."""
        return _worded(self.template, self.CLI)


def _worded(template: str, words: dict[str, str]) -> str:
    """template with each marker replaced by its wording."""
    for marker, word in words.items():
        template = template.replace(marker, word)
    return template


class QuantError(SSDLabError):
    """A quantization setting is unknown or out of range."""


class ExportError(SSDLabError):
    """An export request cannot be carried out (format, folder, quantization)."""
