"""A model of how Hopper's tensor cores sum FP8 products, for an emulated layer that computes what the GPU computes.

Every FP8 GEMM on an H100 differs from the float32 sum of the same products by a relative 6.8–6.9e-4 (cuBLASLt,
CUTLASS, Triton; 1.7–3.8e-3 with fast accumulation), far more than summation order gives (≈ 3e-5). This model
reproduces those numbers on all eight benchmarked FLUX.1-dev and SD3.5-medium shapes, and their bits
(``benchmarks/fp8_accumulation.py``, BENCHMARKS.md "What the FP8 GEMMs' 6.9e-4 is"):

- the tensor cores add ``group`` products at a time to their accumulator; every addend (each product and the
  accumulator) is aligned to the largest exponent among them and truncated toward zero ``fraction_bits`` binary
  places below it, and the truncated addends are summed exactly;
- every ``promote_every`` channels of K the kernel adds that accumulator to a float32 register (round to nearest)
  and restarts it from zero (cuBLASLt and CUTLASS without fast accumulation; Triton once per K tile); fast
  accumulation never does (``promote_every`` ``None``).

Those two points alone are not the GPU's sum to the bit (run 20: 24 % of cuBLASLt's float32 accumulators equal at
K = 256). Khattak and Mikaitis's bit-accurate H100 model (arXiv:2512.07004) adds two more, both options here: the
addends are aligned to the products' exponent sums, not their magnitudes (``product_exponents``), and each group's
sum is truncated to ``fraction_bits`` places (``truncate_result``). With groups of 32 that is :data:`HOPPER`, equal to
cuBLASLt's, CUTLASS's and the Triton kernels' FP8 sums on an H200 to the bit (run 21's probe; the FLUX.1-dev
``w8a8_fp8`` model's output equal too). The emulated backend sums FP8 in float32 unless :data:`EMULATED_FP8` names a
model (:func:`tensor_core_numerics`; ``segquant eval --fp8-numerics tensor-cores``): the model costs about a hundred
matmuls' time on the CPU. The models with few enough fraction bits are exact in float32
(:attr:`Accumulation.float32_exact`): a product of two E4M3 values has 8 significant bits, and the truncated addends
of one group are multiples of one power of two.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Accumulation:
    """One model of the tensor cores' FP8 sum (module doc). ``promote_every``: channels of K per float32 promotion,
    a multiple of ``group`` (``None``: never, fast accumulation). ``truncate_sum``: the alternative the GPU's errors
    rule out (the exact sum of accumulator and group truncated, not each addend), kept for the benchmark's fit.
    ``product_exponents``: addends aligned to the largest of the products' exponent sums (each factor's exponent,
    at least E4M3's −6) and the accumulator's exponent, not to the largest magnitude (a product of two
    significands may reach 4, one place above its exponent sum). ``truncate_result``: each group's sum then
    truncated toward zero to ``fraction_bits`` places below its own leading bit (an accumulator of that width).
    Both as Khattak and Mikaitis model the H100's FP8 tensor cores (arXiv:2512.07004: groups of 32, 13 places,
    truncation)."""

    group: int = 16
    fraction_bits: int = 13
    promote_every: int | None = 128
    truncate_accumulator: bool = True
    truncate_sum: bool = False
    product_exponents: bool = False
    truncate_result: bool = False

    @property
    def name(self) -> str:
        promote = "fast" if self.promote_every is None else f"promote_{self.promote_every}"
        kept = "_sum_truncated" if self.truncate_sum else "" if self.truncate_accumulator else "_keep_acc"
        aligned = "_product_exponents" if self.product_exponents else ""
        result = "_result_truncated" if self.truncate_result else ""
        return f"g{self.group}_f{self.fraction_bits}_{promote}{kept}{aligned}{result}"

    @property
    def float32_exact(self) -> bool:
        """Whether float32 holds every step: each addend truncated to a multiple of one unit below
        ``2^(fraction_bits + 2)`` of it (a product of significands is below 4), ``group + 1`` of them summed."""
        return (self.truncate_accumulator and not self.truncate_sum
                and self.fraction_bits + 2 + (self.group + 1).bit_length() <= FLOAT32_SIGNIFICAND_BITS)


#: Channels of K after which cuBLASLt and CUTLASS (without fast accumulation) promote an FP8 sum to float32, and the
#: gpu backend's Triton kernels too (``max_num_imprecise_acc``, whatever their K tile).
KERNEL_PROMOTE_EVERY = 128
#: Hopper's FP8 sum without fast accumulation, to the bit (Khattak and Mikaitis; run 21's probe on an H200: cuBLASLt,
#: CUTLASS and the Triton kernels).
HOPPER = Accumulation(group=32, promote_every=KERNEL_PROMOTE_EVERY, product_exponents=True, truncate_result=True)
#: The same with fast accumulation (never promoted): cuBLASLt's ``use_fast_accum`` to the bit up to K = 3072 (run 21).
HOPPER_FAST = dataclasses.replace(HOPPER, promote_every=None)
#: The emulated backend's plain static FP8 layers sum with this model when set (``None``: float32, the default).
EMULATED_FP8: dict[str, Accumulation | None] = {"accumulation": None}
#: The emulated backend's FP8 sums by name (``segquant eval --fp8-numerics``): exact float32, or Hopper's.
FP8_NUMERICS: dict[str, Accumulation | None] = {"float32": None, "tensor-cores": HOPPER}
#: Significant bits of float32, which holds a group's truncated sum exactly while it stays below this many units.
FLOAT32_SIGNIFICAND_BITS = 24
#: E4M3's smallest normal exponent: the exponent a subnormal code counts with (``product_exponents``).
E4M3_MIN_EXPONENT = -6
#: Elements of the ``(rows, N, group)`` products one step of :func:`tensor_core_sum` holds at most: 2 MB of float32,
#: which stay in the CPU's cache across the step's passes (3x faster than 128 MB chunks on the 2-core development CPU).
CHUNK_ELEMENTS = 1 << 19


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


def _exponents(x: Tensor, lowest: int | None = None) -> Tensor:
    """``⌊log2 |x|⌋`` in ``x``'s dtype, at least ``lowest`` where given (E4M3's subnormals count as
    :data:`E4M3_MIN_EXPONENT`); zeros get ``-inf``, so that they never set an alignment."""
    exponents = (torch.frexp(x)[1] - 1).to(x.dtype)
    exponents = exponents if lowest is None else exponents.clamp(min=lowest)
    return torch.where(x == 0, float("-inf"), exponents)


def _group_unit(products: Tensor, a_group: Tensor, b_group: Tensor, acc: Tensor, model: Accumulation) -> Tensor:
    """The unit ``(M, N)`` a group's addends are truncated to: ``fraction_bits`` places below the largest product
    and the accumulator, or below their exponents (``product_exponents``)."""
    if not model.product_exponents:
        return _unit(torch.maximum(products.abs().amax(-1), acc.abs()), model.fraction_bits)
    factors = _exponents(a_group, E4M3_MIN_EXPONENT)[:, None, :] + _exponents(b_group, E4M3_MIN_EXPONENT)[None, :, :]
    largest = torch.maximum(factors.amax(-1), _exponents(acc))
    return torch.exp2(torch.where(torch.isinf(largest), 0.0, largest) - model.fraction_bits)


def _rows_sum(a: Tensor, b: Tensor, model: Accumulation) -> Tensor:
    """:func:`tensor_core_sum` of ``a`` ``(M, K)`` values and ``b`` ``(N, K)`` in their dtype; the promotions add
    in float32."""
    total = a.new_zeros(a.shape[0], b.shape[0], dtype=torch.float32)
    acc = torch.zeros_like(total, dtype=a.dtype)
    for k0 in range(0, a.shape[1], model.group):
        a_group, b_group = a[:, k0:k0 + model.group], b[:, k0:k0 + model.group]
        products = a_group[:, None, :] * b_group[None, :, :]  # (M, N, group), exact
        if model.truncate_sum:
            acc = acc + products.sum(-1)
            acc = _truncated(acc, _unit(acc.abs(), model.fraction_bits))
        else:
            unit = _group_unit(products, a_group, b_group, acc, model)  # (M, N)
            kept = _truncated(acc, unit) if model.truncate_accumulator else acc
            # the truncated addends counted in units, in place: integers the dtype sums exactly (``float32_exact``)
            acc = kept + products.div_(unit[..., None]).trunc_().sum(-1) * unit
        if model.truncate_result:
            acc = _truncated(acc, _unit(acc.abs(), model.fraction_bits))
        if model.promote_every is not None and (k0 + model.group) % model.promote_every == 0:
            total, acc = total + acc.float(), torch.zeros_like(acc)
    return total + acc.float()


def tensor_core_sum(a: Tensor, b: Tensor, model: Accumulation = HOPPER) -> Tensor:
    """``Σ_k a[m, k] · b[n, k]`` as ``model`` sums it: ``a`` ``(M, K)`` and ``b`` ``(N, K)`` E4M3 codes (any float
    dtype holding them) -> ``(M, N)`` float32, the accumulator as the GEMM leaves it (before any scale). Rows in
    chunks of at most :data:`CHUNK_ELEMENTS` products per step. Float32 holds every step of a model that truncates
    each addend and the accumulator few enough places down (:attr:`Accumulation.float32_exact`) exactly (module doc);
    the others sum in float64. On CUDA the float32 family runs a Triton kernel with the same arithmetic
    (:mod:`segquant.kernels.gpu.triton_fp8_emulation`)."""
    if a.shape[0] == 0 or b.shape[0] == 0:
        return torch.zeros(a.shape[0], b.shape[0], device=a.device)
    if model.float32_exact and a.is_cuda:
        from segquant.kernels.gpu.triton_fp8_emulation import tensor_core_sum_triton
        return tensor_core_sum_triton(a, b, model)
    a, b = (a.float(), b.float()) if model.float32_exact else (a.double(), b.double())
    rows = max(1, CHUNK_ELEMENTS // max(1, b.shape[0] * model.group))
    return torch.cat([_rows_sum(a[m0:m0 + rows], b, model) for m0 in range(0, a.shape[0], rows)]).float()
