"""A model of how Hopper's tensor cores sum FP8 products, for an emulated layer that computes what the GPU computes.

Every FP8 GEMM on an H100 differs from the float32 sum of the same products by a relative 6.8–6.9e-4 (cuBLASLt,
CUTLASS, Triton; 1.7–3.8e-3 with fast accumulation), far more than summation order gives (≈ 3e-5). This model
reproduces those numbers on all eight benchmarked FLUX.1-dev and SD3.5-medium shapes
(``benchmarks/fp8_accumulation.py``, BENCHMARKS.md "What the FP8 GEMMs' 6.9e-4 is"):

- the tensor cores add ``group`` products at a time to their accumulator; every addend (each product and the
  accumulator) is aligned to the largest exponent among them and truncated toward zero ``fraction_bits`` binary
  places below it, and the truncated addends are summed exactly;
- every ``promote_every`` channels of K the kernel adds that accumulator to a float32 register (round to nearest)
  and restarts it from zero (cuBLASLt and CUTLASS without fast accumulation; Triton once per K tile); fast
  accumulation never does (``promote_every`` ``None``).

Whether it is exact to the bit is for the GPU to say (the benchmark's ``probe``); until then the emulated backend sums
FP8 in float32 unless :data:`EMULATED_FP8` names a model (:func:`tensor_core_numerics`). Every step is exact in float32:
a product of two E4M3 values has 8 significant bits, and the truncated addends of one group are multiples of one
power of two below ``2^(fraction_bits + 6)`` of it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Accumulation:
    """One model of the tensor cores' FP8 sum (module doc). ``promote_every``: channels of K per float32 promotion,
    a multiple of ``group`` (``None``: never, fast accumulation). ``truncate_sum``: the alternative the GPU's errors
    rule out (the exact sum of accumulator and group truncated, not each addend), kept for the benchmark's fit."""

    group: int = 16
    fraction_bits: int = 13
    promote_every: int | None = 128
    truncate_accumulator: bool = True
    truncate_sum: bool = False

    @property
    def name(self) -> str:
        promote = "fast" if self.promote_every is None else f"promote_{self.promote_every}"
        kept = "_sum_truncated" if self.truncate_sum else "" if self.truncate_accumulator else "_keep_acc"
        return f"g{self.group}_f{self.fraction_bits}_{promote}{kept}"


#: Channels of K after which cuBLASLt and CUTLASS (without fast accumulation) promote an FP8 sum to float32, and the
#: gpu backend's Triton kernels too (``max_num_imprecise_acc``, whatever their K tile).
KERNEL_PROMOTE_EVERY = 128
#: The model fitted to the H100's FP8 GEMMs without fast accumulation (not yet checked bit for bit).
HOPPER = Accumulation(promote_every=KERNEL_PROMOTE_EVERY)
#: The emulated backend's plain static FP8 layers sum with this model when set (``None``: float32, the default).
EMULATED_FP8: dict[str, Accumulation | None] = {"accumulation": None}
#: Fraction bits up to which a group's truncated sum (below ``2^(fraction_bits + 6)`` units) fits float32's 24 bits.
FLOAT32_BITS = 17
#: Elements of the ``(rows, N, group)`` products one step of :func:`tensor_core_sum` holds at most (float32).
CHUNK_ELEMENTS = 1 << 25


@contextlib.contextmanager
def tensor_core_numerics(model: Accumulation | None = HOPPER) -> Iterator[None]:
    """Within the block, the emulated backend sums plain static FP8 layers with ``model``."""
    before = EMULATED_FP8["accumulation"]
    EMULATED_FP8["accumulation"] = model
    try:
        yield
    finally:
        EMULATED_FP8["accumulation"] = before


def _unit(largest: Tensor, fraction_bits: int) -> Tensor:
    """``2^(⌊log2 largest⌋ − fraction_bits)``: the last binary place kept below ``largest``."""
    return torch.exp2((torch.frexp(largest)[1] - 1 - fraction_bits).to(largest.dtype))


def _truncated(x: Tensor, unit: Tensor) -> Tensor:
    """``x`` truncated toward zero to a multiple of ``unit`` (a power of two: exact)."""
    return torch.trunc(x / unit) * unit


def _rows_sum(a: Tensor, b: Tensor, model: Accumulation) -> Tensor:
    """:func:`tensor_core_sum` of ``a`` ``(M, K)`` values and ``b`` ``(N, K)`` in their dtype; the promotions add
    in float32."""
    total = a.new_zeros(a.shape[0], b.shape[0], dtype=torch.float32)
    acc = torch.zeros_like(total)
    for k0 in range(0, a.shape[1], model.group):
        products = a[:, None, k0:k0 + model.group] * b[None, :, k0:k0 + model.group]  # (M, N, group), exact
        if model.truncate_sum:
            acc = acc + products.sum(-1)
            acc = _truncated(acc, _unit(acc.abs(), model.fraction_bits))
        else:
            unit = _unit(torch.maximum(products.abs().amax(-1), acc.abs()), model.fraction_bits)  # (M, N)
            kept = _truncated(acc, unit) if model.truncate_accumulator else acc
            acc = kept + _truncated(products, unit[..., None]).sum(-1)
        if model.promote_every is not None and (k0 + model.group) % model.promote_every == 0:
            total, acc = total + acc.float(), torch.zeros_like(acc)
    return total + acc.float()


def tensor_core_sum(a: Tensor, b: Tensor, model: Accumulation = HOPPER) -> Tensor:
    """``Σ_k a[m, k] · b[n, k]`` as ``model`` sums it: ``a`` ``(M, K)`` and ``b`` ``(N, K)`` E4M3 codes (any float
    dtype holding them) -> ``(M, N)`` float32, the accumulator as the GEMM leaves it (before any scale). Rows in
    chunks of at most :data:`CHUNK_ELEMENTS` products per step. Float32 holds every step of a model that truncates
    each addend and the accumulator at most :data:`FLOAT32_BITS` places down exactly (module doc); the others sum in
    float64. On CUDA the float32 family runs a Triton kernel with the same arithmetic
    (:mod:`segquant.kernels.gpu.triton_fp8_emulation`)."""
    if a.shape[0] == 0 or b.shape[0] == 0:
        return torch.zeros(a.shape[0], b.shape[0], device=a.device)
    exact_in_float32 = model.truncate_accumulator and not model.truncate_sum and model.fraction_bits <= FLOAT32_BITS
    if exact_in_float32 and a.is_cuda:
        from segquant.kernels.gpu.triton_fp8_emulation import tensor_core_sum_triton
        return tensor_core_sum_triton(a, b, model.group, model.fraction_bits, model.promote_every)
    a, b = (a.float(), b.float()) if exact_in_float32 else (a.double(), b.double())
    rows = max(1, CHUNK_ELEMENTS // max(1, b.shape[0] * model.group))
    return torch.cat([_rows_sum(a[m0:m0 + rows], b, model) for m0 in range(0, a.shape[0], rows)]).float()
