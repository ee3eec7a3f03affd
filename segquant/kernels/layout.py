"""The GEMM layout of a ``SegLinear``: which scale column every input channel reads, where the scales change
along K, and which output segments have their own input. Pure torch on any device: the GPU plan
(:mod:`segquant.kernels.gpu.plan`) packs and routes by it, and the emulated layer
(:mod:`segquant.kernels.reference`) follows it where it reproduces the kernels bitwise (INT8 x INT8).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from segquant.enums import DType
from segquant.nn.spec import SegLinearSpec
from segquant.numerics import PerGroup

#: Constant-scale K blocks (input segments with their own scales, e.g. FLUX's ``cat`` of 3072 + 12288) of at least
#: this many channels, and at most :data:`MAX_SPLIT_BLOCKS` of them, run as one plain GEMM each (see
#: :attr:`GemmLayout.split_blocks`): a block then costs its GEMM at plain speed plus one float32 output written and
#: read (8 bytes per output element, about the time of 1000 channels of 8-bit MMA), where the per-K-tile path runs the
#: whole layer at about half the plain speed.
MIN_SPLIT_K = 1024
MAX_SPLIT_BLOCKS = 4
#: Rows up to which the gpu backend runs an 8-bit layer on its CUDA-core GEMV instead of the tensor cores (at 2 rows the
#: GEMV, which reads the weight once per row, measured 0.6-1.1x the tiled kernel on an H200; at 1 row 1.0-1.9x, see
#: BENCHMARKS.md).
GEMV_MAX_M_8BIT = 1
_INTEGER_WEIGHTS = (DType.INT8, DType.INT6)


@dataclass(frozen=True)
class GemmLayout:
    """Static facts of one quantized layer that choose the kernel variant and its summation.

    ``scale_mode``: 0 = scales constant along K; 1 = the input scale varies along K (input segments,
    groups); 2 = the weight scale varies (the input scale may too: ``input_varies``). ``k_align``: gcd of
    the positions where a scale changes (0 = never); ``out_segment``: rows per output segment when each has
    its own input (``per_segment_input``, ``Sa > 1``), else ``N``.
    """

    spec: SegLinearSpec
    per_segment_input: bool
    scale_mode: int
    k_align: int
    out_segment: int
    input_varies: bool
    blocks: tuple[int, ...] = (0,)  # first channel of each constant-scale K block

    @property
    def tile_scaled(self) -> bool:
        """Whether the kernel rescales every K tile (so a K tile must divide ``k_align``): the input scale
        varies along K, or 8-bit weight scales do (packed INT4 weights take their group scales in the
        dequantized weight tile instead)."""
        return self.input_varies or (self.scale_mode == 2 and self.spec.weight_dtype is not DType.INT4)

    @property
    def split_blocks(self) -> bool:
        """Whether the layer runs as one plain GEMM per constant-scale K block, the float32 partial products added
        in block order, then the bias (:func:`segquant.kernels.gemm_reference.blockwise_gemm`) instead of the
        per-K-tile scaled GEMM: INT8 inputs times 8-bit integer weights, one input (no per-output-segment
        smoothing), no DualScale, 2 to :data:`MAX_SPLIT_BLOCKS` blocks of at least :data:`MIN_SPLIT_K` channels
        each, starting at multiples of 16 (TMA's alignment). The emulated layer sums the same way."""
        spec = self.spec
        widths = [end - start for start, end in zip(self.blocks, self.blocks[1:] + (spec.in_features,))]
        return (self.tile_scaled and spec.input_dtype is DType.INT8 and spec.weight_dtype in _INTEGER_WEIGHTS
                and not spec.dual_scale and not self.per_segment_input
                and 2 <= len(self.blocks) <= MAX_SPLIT_BLOCKS and min(widths) >= MIN_SPLIT_K
                and all(start % 16 == 0 for start in self.blocks))

    @property
    def plain_static_fp8(self) -> bool:
        """Static E4M3 inputs times E4M3 weights with one input and one weight scale column, no DualScale, no
        per-output-segment input, no low-rank branch, K and N multiples of 16 (cuBLASLt's FP8 alignment): the layers
        the gpu backend runs on ``torch._scaled_mm`` with the input scale folded into the column scales
        (:func:`segquant.kernels.quant.folded_fp8_columns`), and the emulated layer can sum as its tensor cores do
        (:mod:`segquant.kernels.fp8_accumulation`)."""
        spec = self.spec
        return (spec.weight_dtype is DType.FP8E4M3 and spec.input_dtype is DType.FP8E4M3 and not spec.input_dynamic
                and not spec.dual_scale and self.scale_mode == 0 and not self.per_segment_input and not spec.low_rank
                and spec.in_features % 16 == 0 and spec.out_features % 16 == 0)

    @property
    def input_rows(self) -> int:
        """``Sa``: the number of differently quantized inputs (one per output segment, or 1)."""
        return len(self.spec.output_segments) if self.per_segment_input else 1


def input_columns(spec: SegLinearSpec) -> Tensor:
    """``(K,)`` int32: the input-scale column of each input channel (segment, or group of a segment); all 0
    for unquantized (16-bit) inputs, whose one "scale" is 1."""
    if spec.input_dtype is None:
        return torch.zeros(spec.in_features, dtype=torch.int32)
    cols, start = [], 0
    for size in spec.input_segments:
        width = spec.input_granularity.group_size if spec.input_dynamic and isinstance(
            spec.input_granularity, PerGroup) else size
        cols.append(start + torch.arange(size) // width)
        start += size // width
    return torch.cat(cols).to(torch.int32)


def weight_columns(buffers) -> Tensor:
    """``(K,)`` int32 weight-scale column per input channel; all 0 if the scale columns are identical.
    ``buffers``: a ``SegLinear`` or its :class:`~segquant.kernels.reference.SegLinearBuffers`."""
    scale = buffers.weight_scale if buffers.weight_steps is None else buffers.weight_steps
    if bool((scale == scale[:, :1]).all()):
        return torch.zeros_like(buffers.weight_col_group, dtype=torch.int32)
    return buffers.weight_col_group.to(torch.int32)


def _changes(col: Tensor) -> list[int]:
    return (torch.nonzero(col[1:] != col[:-1]).flatten() + 1).tolist()


def gemm_layout(spec: SegLinearSpec, buffers) -> GemmLayout:
    """The :class:`GemmLayout` of a layer from its spec and buffers (reads ``weight_scale``, ``weight_steps`` and
    ``weight_col_group``)."""
    a_changes, w_changes = _changes(input_columns(spec)), _changes(weight_columns(buffers).cpu())
    mode = 2 if w_changes else (1 if a_changes else 0)
    per_segment = spec.has_smooth_buffer and len(spec.output_segments) > 1
    return GemmLayout(spec, per_segment, scale_mode=mode, k_align=math.gcd(*a_changes, *w_changes, 0),
                      out_segment=spec.output_segments[0] if per_segment else spec.out_features,
                      input_varies=bool(a_changes), blocks=(0, *sorted(set(a_changes) | set(w_changes))))


def layout_of(module) -> GemmLayout:
    """The :class:`GemmLayout` of a ``SegLinear``."""
    return gemm_layout(module.spec, module)
