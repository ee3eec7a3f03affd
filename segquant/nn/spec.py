"""The typed inputs of one layer's conversion: ``SegLinearSpec`` and ``LayerSettings``.

``SegLinearSpec`` is the static layout of a ``SegLinear`` (shapes, segments, number formats);
``LayerSettings`` the algorithm settings that choose its buffers (SmoothQuant alpha or its search,
clipping method, GPTQ options). Both are plain frozen data, built by the caller (the plan) — ``nn/``
knows nothing of configs or plans. A saved model stores the plan, from which the spec of every layer
is derived again at load time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from segquant.enums import Calibrate, DType
from segquant.numerics import Granularity, PerChannel, PerGroup, PerTensor

_PRECISION = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def granularity_to_str(granularity: Granularity) -> str:
    return f"group{granularity.group_size}" if isinstance(granularity, PerGroup) else granularity.name


@dataclass(frozen=True)
class SegLinearSpec:
    """Layout of one quantized linear layer.

    ``output_segments`` sums to ``out_features`` and ``input_segments`` to ``in_features`` (a single
    segment means "not segmented"). ``input_dtype`` / ``weight_dtype`` of ``None`` mean "not quantized".
    ``weight_scale_columns`` is ``G``, the number of weight scale columns (input segments × groups).
    ``weight_two_level``: INT4 group scales stored as integer steps 1..16 (``weight_steps``, uint8) of one
    scale per row (``weight_scale`` ``(N, 1)``), see :mod:`segquant.nn.seglinear`. ``folded_input_segments``:
    input segments whose static scales are folded into the ``smooth`` buffer (which then exists even without
    SmoothQuant): the layer itself has one input segment and one input scale (``input_segments`` is ``(K,)``).
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
    weight_two_level: bool = False
    smooth: bool = False
    low_rank: int = 0
    low_rank_precision: str = "fp16"
    has_bias: bool = True
    folded_input_segments: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if sum(self.output_segments) != self.out_features or sum(self.input_segments) != self.in_features:
            raise ValueError(f"segments {self.output_segments} / {self.input_segments} do not add up to "
                             f"({self.out_features}, {self.in_features})")
        if self.folded_input_segments and (sum(self.folded_input_segments) != self.in_features
                                           or len(self.input_segments) > 1):
            raise ValueError(f"folded input segments {self.folded_input_segments} must add up to {self.in_features} "
                             f"and leave one input segment, not {self.input_segments}")

    @property
    def has_smooth_buffer(self) -> bool:
        """Whether the layer holds a ``smooth`` divisor: SmoothQuant, or static segment scales folded into it."""
        return self.smooth or bool(self.folded_input_segments)

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
        if self.folded_input_segments:
            parts.append(f"folded_in_segments={len(self.folded_input_segments)}")
        parts += [name for name, on in (("two_level", self.weight_two_level), ("dualscale", self.dual_scale),
                                        ("smooth", self.smooth)) if on]
        if self.low_rank:
            parts.append(f"rank={self.low_rank}")
        return ", ".join(parts)


@dataclass(frozen=True)
class AlphaSearch:
    """Candidate alphas ``min, min+step, …, max`` (both ends included)."""

    min: float = 0.0
    max: float = 1.0
    step: float = 0.1


@dataclass(frozen=True)
class LayerSettings:
    """The algorithm settings of one layer (what its ``SegLinearSpec`` does not say).

    ``alpha``: SmoothQuant strength (used when ``spec.smooth`` and no ``alpha_search``).
    ``weight_method``: AMAX / PERCENTILE / MSE clipping (the latter two also clip static input ranges)
    or GPTQ. ``weight_granularity``: ``PerTensor`` / ``PerChannel`` / ``PerGroup(g)`` of the weight scales;
    ``weight_two_level``: group scales as integer multiples (1..16) of one scale per row
    (:func:`segquant.numerics.two_level_amax`).
    """

    alpha: float = 0.5
    alpha_search: AlphaSearch | None = None
    weight_method: Calibrate = Calibrate.AMAX
    weight_granularity: Granularity = field(default_factory=PerChannel)
    weight_two_level: bool = False
    percentile: float = 99.99
    gptq_blocksize: int = 128
    gptq_percdamp: float = 0.01
    gptq_actorder: bool = False
    gptq_static_groups: bool = False

    @property
    def weight_group_size(self) -> int | None:
        return self.weight_granularity.group_size if isinstance(self.weight_granularity, PerGroup) else None
