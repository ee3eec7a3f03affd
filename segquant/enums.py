"""Enumerations of the configuration language, with the names and string values of the original API.

Every enum is a ``str`` subclass, so ``DType.INT8 == "int8"`` and members serialise to JSON/YAML
as their plain string value.
"""

from __future__ import annotations

from enum import Enum

import torch


class _StrEnum(str, Enum):
    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, value: "str | _StrEnum", key: str = "value") -> "_StrEnum":
        """Return the member for ``value`` (a member or its string value, case-insensitive).

        Raises ``ConfigError`` naming ``key``, the bad value and the allowed values.
        """
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            for member in cls:
                if value.lower() in (member.value, member.name.lower()):
                    return member
        from segquant.errors import ConfigError

        allowed = ", ".join(repr(m.value) for m in cls)
        raise ConfigError(f"{key}: {value!r} is not a valid {cls.__name__}; allowed: {allowed}")


class DType(_StrEnum):
    """Number formats a tensor can be quantized to."""

    INT4 = "int4"
    INT6 = "int6"
    INT8 = "int8"
    INT16 = "int16"
    FP8E4M3 = "fpe4m3"
    FP8E5M2 = "fpe5m2"
    FP16 = "fp16"
    BF16 = "bf16"

    @property
    def is_int(self) -> bool:
        return self.value.startswith("int")

    @property
    def is_fp8(self) -> bool:
        return self in (DType.FP8E4M3, DType.FP8E5M2)

    @property
    def is_passthrough(self) -> bool:
        """16-bit floats: a plain cast, no scale."""
        return self in (DType.FP16, DType.BF16)

    @property
    def bits(self) -> int:
        return {"int4": 4, "int6": 6, "int8": 8, "int16": 16, "fpe4m3": 8, "fpe5m2": 8}.get(self.value, 16)

    @property
    def qmin(self) -> float:
        """Smallest representable code (integers) or value (float formats)."""
        return -self.qmax - 1 if self.is_int else -self.qmax

    @property
    def qmax(self) -> float:
        """Largest representable code (integers) or value (float formats)."""
        if self.is_int:
            return float(2 ** (self.bits - 1) - 1)
        return float(torch.finfo(self.torch_dtype).max)

    @property
    def torch_dtype(self) -> torch.dtype:
        """Storage dtype of the quantized codes (int4/int6 codes are stored in int8)."""
        return {
            "int4": torch.int8,
            "int6": torch.int8,
            "int8": torch.int8,
            "int16": torch.int16,
            "fpe4m3": torch.float8_e4m3fn,
            "fpe5m2": torch.float8_e5m2,
            "fp16": torch.float16,
            "bf16": torch.bfloat16,
        }[self.value]


class Optimum(_StrEnum):
    """Weight/activation transformation applied before quantization."""

    DEFAULT = "default"
    SMOOTH = "smooth"
    SVD = "svd"


class Calibrate(_StrEnum):
    """How quantized weights and clipping ranges are chosen."""

    AMAX = "amax"
    GPTQ = "gptq"
    PERCENTILE = "percentile"
    MSE = "mse"


class SegPattern(_StrEnum):
    """Graph structures that decide how a linear layer is segmented."""

    LINEAR2CHUNK = "linear_to_chunk"
    LINEAR2SPLIT = "linear_to_split"
    CONCAT2LINEAR = "concat_to_linear"
    STACK2LINEAR = "stack_to_linear"
    RESHAPE2LINEAR = "reshape_to_linear"
    ACTIVATION2LINEAR = "activation_to_linear"

    @classmethod
    def seg(cls) -> list["SegPattern"]:
        """The five segmentation patterns (everything but DualScale)."""
        return [m for m in cls if m is not cls.ACTIVATION2LINEAR]

    @classmethod
    def all(cls) -> list["SegPattern"]:
        """All six patterns."""
        return list(cls)

    @property
    def side(self) -> str:
        """Which side of the linear layer is segmented: "output", "input" or "dual"."""
        if self in (SegPattern.LINEAR2CHUNK, SegPattern.LINEAR2SPLIT):
            return "output"
        if self is SegPattern.ACTIVATION2LINEAR:
            return "dual"
        return "input"
