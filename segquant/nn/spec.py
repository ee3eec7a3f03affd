"""``SegLinearSpec``: the static layout of a ``SegLinear`` (shapes, segments, number formats).

It is plain data: it decides which buffers a ``SegLinear`` has and how its forward runs, and it
round-trips through JSON so a saved model can be rebuilt on an unquantized skeleton.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from segquant.enums import DType
from segquant.numerics import Granularity, PerChannel, PerGroup, PerTensor, PerToken

_PRECISION = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def granularity_to_str(granularity: Granularity) -> str:
    return f"group{granularity.group_size}" if isinstance(granularity, PerGroup) else granularity.name


def granularity_from_str(text: str) -> Granularity:
    if text.startswith("group"):
        return PerGroup(int(text[5:]))
    return {"tensor": PerTensor(), "channel": PerChannel(), "token": PerToken()}[text]


@dataclass(frozen=True)
class SegLinearSpec:
    """Layout of one quantized linear layer.

    ``output_segments`` sums to ``out_features`` and ``input_segments`` to ``in_features`` (a single
    segment means "not segmented"). ``input_dtype`` / ``weight_dtype`` of ``None`` mean "not quantized".
    ``weight_scale_columns`` is ``G``, the number of weight scale columns (input segments × groups).
    """

    in_features: int
    out_features: int
    output_segments: tuple[int, ...]
    input_segments: tuple[int, ...]
    input_dtype: DType | None
    input_dynamic: bool = False
    input_granularity: Granularity = field(default_factory=PerTensor)
    input_symmetric: bool = True
    dual_scale: bool = False
    weight_dtype: DType | None = DType.INT8
    weight_scale_columns: int = 1
    smooth: bool = False
    low_rank: int = 0
    low_rank_precision: str = "fp16"
    has_bias: bool = True

    def __post_init__(self) -> None:
        if sum(self.output_segments) != self.out_features or sum(self.input_segments) != self.in_features:
            raise ValueError(f"segments {self.output_segments} / {self.input_segments} do not add up to "
                             f"({self.out_features}, {self.in_features})")

    @property
    def low_rank_dtype(self) -> torch.dtype:
        return _PRECISION[self.low_rank_precision]

    def describe(self) -> str:
        """One line for ``repr``: shape, formats, segments and options."""
        inp = "none" if self.input_dtype is None else (
            f"{self.input_dtype.value}/{granularity_to_str(self.input_granularity)}/"
            f"{'dynamic' if self.input_dynamic else 'static'}")
        parts = [f"in={self.in_features}, out={self.out_features}",
                 f"w={self.weight_dtype.value if self.weight_dtype else 'none'}", f"x={inp}"]
        if len(self.output_segments) > 1:
            parts.append(f"out_segments={len(self.output_segments)}")
        if len(self.input_segments) > 1:
            parts.append(f"in_segments={len(self.input_segments)}")
        parts += [name for name, on in (("dualscale", self.dual_scale), ("smooth", self.smooth)) if on]
        if self.low_rank:
            parts.append(f"rank={self.low_rank}")
        return ", ".join(parts)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["input_dtype"] = self.input_dtype.value if self.input_dtype else None
        d["weight_dtype"] = self.weight_dtype.value if self.weight_dtype else None
        d["input_granularity"] = granularity_to_str(self.input_granularity)
        d["output_segments"], d["input_segments"] = list(self.output_segments), list(self.input_segments)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "SegLinearSpec":
        d = dict(d)
        d["input_dtype"] = DType(d["input_dtype"]) if d["input_dtype"] else None
        d["weight_dtype"] = DType(d["weight_dtype"]) if d["weight_dtype"] else None
        d["input_granularity"] = granularity_from_str(d["input_granularity"])
        d["output_segments"], d["input_segments"] = tuple(d["output_segments"]), tuple(d["input_segments"])
        return cls(**d)
