"""SegLinear layouts over many shapes (odd sizes included) with random but valid buffers.

Shared by the reference-function tests and, later, every kernel backend's tests: a case is a
``SegLinearSpec`` plus an input shape and dtype; :func:`random_buffers` fills every canonical buffer
with values a real conversion could produce (codes in range, positive scales, integer zero points).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from segquant.enums import DType
from segquant.nn.spec import SegLinearSpec
from segquant.numerics import PerGroup, PerToken, stored_codes


@dataclass(frozen=True)
class Case:
    name: str
    spec: SegLinearSpec
    x_shape: tuple[int, ...]
    x_dtype: torch.dtype = torch.float32
    group_size: int | None = None  # weight scale groups (else one scale column per input segment)


def _spec(k, n, out=None, inp=None, dtype=DType.INT8, weight=DType.INT8, group=None, **kw) -> SegLinearSpec:
    inp = inp or (k,)
    columns = k // group if group else len(inp)
    return SegLinearSpec(k, n, out or (n,), inp, dtype, weight_dtype=weight, weight_scale_columns=columns, **kw)


CASES = [
    Case("plain_odd", _spec(17, 13), (5, 17)),
    Case("one_row", _spec(8, 3), (1, 8)),
    Case("one_by_one", _spec(1, 1), (3, 1)),
    Case("batched_3d", _spec(16, 12), (2, 7, 16)),
    Case("no_bias", _spec(9, 11, has_bias=False), (4, 9)),
    Case("out_segments_odd", _spec(15, 19, out=(3, 7, 9)), (6, 15)),
    Case("in_segments_unequal", _spec(21, 10, inp=(5, 16)), (3, 21)),
    Case("in_and_out_segments", _spec(20, 12, out=(4, 8), inp=(6, 14)), (5, 20)),
    Case("heads", _spec(24, 24, inp=(6, 6, 6, 6)), (2, 3, 24)),
    Case("dualscale_static", _spec(13, 7, dual_scale=True), (9, 13)),
    Case("dualscale_segments", _spec(16, 12, out=(4, 8), inp=(6, 10), dual_scale=True, smooth=True,
                                     low_rank=2), (3, 5, 16)),
    Case("dualscale_dynamic_token", _spec(11, 5, dual_scale=True, input_dynamic=True,
                                          input_granularity=PerToken()), (7, 11)),
    Case("dualscale_dynamic_group", _spec(12, 5, dual_scale=True, input_dynamic=True,
                                          input_granularity=PerGroup(4)), (3, 12)),
    Case("dynamic_token", _spec(19, 9, out=(4, 5), input_dynamic=True, input_granularity=PerToken()), (6, 19)),
    Case("dynamic_tensor", _spec(10, 6, input_dynamic=True), (4, 10)),
    Case("dynamic_group_asym", _spec(16, 7, input_dynamic=True, input_granularity=PerGroup(8),
                                     input_symmetric=False), (5, 16)),
    Case("static_asym", _spec(14, 9, inp=(5, 9), input_symmetric=False), (4, 14)),
    Case("smooth_out_segments", _spec(18, 15, out=(5, 5, 5), smooth=True), (3, 18)),
    Case("folded_segments", _spec(21, 9, folded_input_segments=(5, 16)), (4, 21)),
    Case("folded_segments_smooth", _spec(20, 12, out=(4, 8), folded_input_segments=(6, 14), smooth=True), (5, 20)),
    Case("lowrank_odd", _spec(23, 17, low_rank=3, smooth=True), (2, 23)),
    Case("lowrank_bf16", _spec(12, 8, out=(3, 5), low_rank=4, smooth=True, low_rank_precision="bf16"), (5, 12)),
    Case("weight_groups", _spec(24, 10, group=8), (3, 24), group_size=8),
    Case("weight_groups_in_segments", _spec(32, 6, inp=(16, 16), group=8), (2, 32), group_size=8),
    Case("int4_weights", _spec(16, 9, weight=DType.INT4, group=4), (3, 16), group_size=4),
    Case("int4_weights_odd_k", _spec(15, 5, weight=DType.INT4), (2, 15)),
    Case("fp8", _spec(13, 11, dtype=DType.FP8E4M3, weight=DType.FP8E4M3), (5, 13)),
    Case("fp8_e5m2_dual", _spec(10, 4, dtype=DType.FP8E5M2, weight=DType.FP8E4M3, dual_scale=True), (6, 10)),
    Case("weight_only", _spec(15, 7, dtype=None), (4, 15)),
    Case("unquantized_weight", _spec(9, 5, weight=None), (3, 9)),
    Case("int4_inputs", _spec(12, 6, dtype=DType.INT4), (4, 12)),
    Case("bf16_input", _spec(16, 12, out=(4, 8), inp=(6, 10), smooth=True, low_rank=2), (3, 16), torch.bfloat16),
    Case("fp16_input_dual", _spec(17, 5, dual_scale=True, input_dynamic=True, input_granularity=PerToken()),
         (4, 17), torch.float16),
    Case("fp16_input_static", _spec(21, 14, out=(7, 7), inp=(10, 11)), (2, 3, 21), torch.float16),
]
assert len(CASES) >= 20


def _codes(dtype: DType | None, shape: tuple[int, int], g: torch.Generator) -> torch.Tensor:
    if dtype is None:
        return torch.randn(shape, generator=g)
    if dtype.is_int:
        return torch.randint(int(dtype.qmin), int(dtype.qmax) + 1, shape, generator=g).to(dtype.torch_dtype)
    return (torch.randn(shape, generator=g) * 50).clamp(dtype.qmin, dtype.qmax).to(dtype.torch_dtype)


def random_buffers(case: Case, seed: int = 0) -> dict[str, torch.Tensor | None]:
    """Every canonical buffer of ``case.spec`` (the names of the ``SegLinear`` docstring), random and valid."""
    spec, g = case.spec, torch.Generator().manual_seed(seed)
    n, k, s, j = spec.out_features, spec.in_features, len(spec.output_segments), len(spec.input_segments)
    static = spec.input_dtype is not None and not spec.input_dynamic
    if case.group_size:
        col_group = torch.arange(k) // case.group_size
    else:
        col_group = torch.repeat_interleave(torch.arange(j), torch.tensor(spec.input_segments))
    b = {
        "weight_codes": stored_codes(_codes(spec.weight_dtype, (n, k), g), spec.weight_dtype),
        "weight_scale": torch.rand(n, spec.weight_scale_columns, generator=g) * 0.01 + 0.001,
        "weight_col_group": col_group,
        "bias": torch.randn(n, generator=g) if spec.has_bias else None,
        "smooth": torch.rand(s, k, generator=g) * 1.5 + 0.5 if spec.has_smooth_buffer else None,
        "input_scale": torch.rand(s, j, generator=g) * 0.02 + 0.005 if static else None,
        "input_scale_neg": torch.rand(s, j, generator=g) * 0.005 + 0.001 if static and spec.dual_scale else None,
        "input_zero_point": None, "lowrank_up": None, "lowrank_down": None,
    }
    if static and not spec.input_symmetric and not spec.dual_scale:
        b["input_zero_point"] = torch.randint(-20, 20, (s, j), generator=g).float()
    if spec.low_rank:
        b["lowrank_up"] = (torch.randn(n, spec.low_rank, generator=g) * 0.1).to(spec.low_rank_dtype)
        b["lowrank_down"] = (torch.randn(s, spec.low_rank, k, generator=g) * 0.1).to(spec.low_rank_dtype)
    return b


def random_input(case: Case, seed: int = 1) -> torch.Tensor:
    """Inputs with a few outlier channels and a narrow negative side on DualScale layers."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(case.x_shape, generator=g)
    x[..., 0] *= 8
    if case.spec.dual_scale:
        x = torch.where(x < 0, x * 0.05, x)
    return x.to(case.x_dtype)
