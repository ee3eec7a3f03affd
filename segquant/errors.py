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
    """The requested kernel backend cannot run a layer here (no GPU, kernel missing, unsupported format).

    ``BackendUnavailableError(layer, backend, reason, alternative)`` writes a message naming all four
    (also kept as attributes); a single argument is the whole message.
    """

    def __init__(self, layer: str, backend: str | None = None, reason: str | None = None,
                 alternative: str | None = None) -> None:
        self.layer, self.backend, self.reason, self.alternative = layer, backend, reason, alternative
        if backend is None:
            super().__init__(layer)
        else:
            super().__init__(f"layer {layer!r}: backend {backend!r} cannot run it: {reason}"
                             + (f"; {alternative}" if alternative else ""))


class CorruptCheckpointError(SegQuantError, OSError):
    """A saved quantized model whose file is truncated, unparsable or differs from its SHA-256 manifest."""


class MissingCheckpointFileError(CorruptCheckpointError, FileNotFoundError):
    """A file of a saved quantized model is missing."""


class CheckpointMismatchError(SegQuantError, ValueError):
    """A saved quantized model that does not fit the model it is loaded into (wrong architecture)."""


class CheckpointVersionError(CheckpointMismatchError):
    """A saved quantized model written in a newer checkpoint format version than this segquant reads."""


class AlreadyQuantizedError(SegQuantError, ValueError):
    """``quantize`` was called on a model that already holds quantized (``SegLinear``) layers."""


class SigmoidFormBeforeQuantizeError(SegQuantError, ValueError):
    """``quantize`` was called on a model whose tanh-GELUs were put in the sigmoid form
    (:func:`segquant.sigmoid_form_gelus` belongs after ``quantize``)."""


class UnknownLayerError(ConfigError, KeyError):
    """A layer name that the model or plan does not have (the message suggests close matches)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DistributedError(SegQuantError, RuntimeError):
    """A data-parallel (``torchrun``) run that cannot start or whose ranks failed (see ``segquant.distributed``)."""


class RendezvousError(DistributedError):
    """The ``torchrun`` rendezvous environment (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ...) is missing or
    invalid."""


class RankDeviceError(DistributedError):
    """A rank was given a device that does not exist on its host (e.g. ``cuda:3`` with 2 GPUs)."""
