"""One exception family for everything a user can get wrong."""


class SSDLabError(Exception):
    """Base class: a message that names the file (line or key), the problem and the fix."""


class ConfigError(SSDLabError):
    """A YAML recipe or a KEY VALUE override is wrong."""


class CfgError(SSDLabError):
    """A darknet-style backbone .cfg file is wrong."""


class DataError(SSDLabError):
    """A dataset file, folder, image or label is missing or malformed."""


class CheckpointError(SSDLabError):
    """A checkpoint is missing, not an ssdlab checkpoint, or does not match the model."""


class PruneError(SSDLabError):
    """A pruning request cannot be carried out."""


class QuantError(SSDLabError):
    """A quantization setting is unknown or out of range."""


class ExportError(SSDLabError):
    """An export request cannot be carried out (format, folder, quantization)."""
