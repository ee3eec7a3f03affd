"""Exceptions raised by segquant. Each message names the offending key, value or file."""


class SegQuantError(Exception):
    """Base class of every segquant error."""


class ConfigError(SegQuantError, ValueError):
    """An invalid configuration: unknown key, bad value or impossible combination."""


class CalibrationError(SegQuantError, ValueError):
    """Calibration data that cannot be used (NaN/inf, wrong shapes, empty loader)."""


class CorruptShardError(SegQuantError, OSError):
    """A calibration shard on disk is missing, truncated or does not match its manifest."""


class BackendUnavailableError(SegQuantError, RuntimeError):
    """The requested kernel backend cannot run here (no GPU, kernel missing)."""
