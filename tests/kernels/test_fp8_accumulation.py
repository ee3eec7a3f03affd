"""The model of the tensor cores' FP8 sum (``segquant.kernels.fp8_accumulation``) and the emulated layer that, with
it switched on, computes what the gpu backend's plain static FP8 layers compute."""

import math
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from segquant.kernels import fp8_accumulation
from segquant.kernels.fp8_accumulation import (EMULATED_FP8, HOPPER, HOPPER_FAST, Accumulation, tensor_core_numerics,
                                               tensor_core_sum)
from segquant.kernels.gpu import plan
from segquant.kernels.gpu.ops import gemm
from segquant.kernels.layout import layout_of
from tests.kernels.test_gemm_reference import SPECS, filled, pack
from tests.kernels.test_gpu_op_cpu import PLAIN_STATIC_FP8


def _codes(rows: int, k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, k, generator=g) * 64).clamp(-448, 448).to(torch.float8_e4m3fn)


def test_addends_are_truncated_below_the_largest_and_promotion_restarts_the_sum():
    # 16 products of 32 (sum 2⁹), then 16 of 0.15625 = 2⁻³ + 2⁻⁵: 13 places below 2⁹ keep
    # multiples of 2⁻⁴
    a = torch.tensor([[32.0] * 16 + [0.15625] * 16]).to(torch.float8_e4m3fn)
    b = torch.ones(1, 32).to(torch.float8_e4m3fn)
    assert tensor_core_sum(a, b, Accumulation(16, 13, None)).item() == 512 + 16 * 0.125
    assert tensor_core_sum(a, b, Accumulation(16, 13, 16)).item() == 512 + 16 * 0.15625  # promoted: a fresh sum
    assert tensor_core_sum(a, b, Accumulation(16, 14, None)).item() == 512 + 16 * 0.15625  # 2⁻⁵ kept
    # one group of 32: aligned to its largest product, 2⁵, so 2⁻⁵ is kept
    assert tensor_core_sum(a, b, Accumulation(32, 13, None)).item() == 512 + 16 * 0.15625
    # the exact sum truncated instead: 514.5 is a multiple of 2⁻⁴
    assert tensor_core_sum(a, b, Accumulation(16, 13, None, truncate_sum=True)).item() == 512 + 16 * 0.15625


def _scalar_model(a: list[float], b: list[float], fraction_bits: int = 13, group: int = 32) -> float:
    """Khattak and Mikaitis's H100 block FMA, one dot product in Python floats (fast accumulation): per group of
    32, addends truncated toward zero 13 places below the largest of the products' exponent sums (subnormal
    factors count as 2⁻⁶) and the accumulator's exponent, summed exactly, the sum truncated to 13 places."""
    def exponent(x: float) -> int:
        return math.frexp(abs(x))[1] - 1

    def truncated(x: float, unit: float) -> float:
        return math.trunc(x / unit) * unit

    acc = 0.0
    for k0 in range(0, len(a), group):
        pairs = [(x, y) for x, y in zip(a[k0:k0 + group], b[k0:k0 + group]) if x != 0 and y != 0]
        exponents = [max(exponent(x), -6) + max(exponent(y), -6) for x, y in pairs] + ([exponent(acc)] if acc else [])
        if not exponents:
            continue
        unit = 2.0 ** (max(exponents) - fraction_bits)
        total = truncated(acc, unit) + sum(truncated(x * y, unit) for x, y in pairs)
        acc = truncated(total, 2.0 ** (exponent(total) - fraction_bits)) if total else 0.0
    return acc


def test_product_exponent_alignment_and_truncated_group_sums_follow_the_scalar_definition():
    """The ``product_exponents`` / ``truncate_result`` model equals a scalar statement of it on codes over the whole
    E4M3 range (subnormals, carries past a product's exponent sum) and differs from the magnitude-aligned one."""
    g = torch.Generator().manual_seed(3)
    a, b = (torch.randint(0, 255, (rows, 192), generator=g, dtype=torch.int32) for rows in (5, 4))
    a, b = (torch.where((x & 0x7F) == 0x7F, x - 1, x).to(torch.uint8).view(torch.float8_e4m3fn) for x in (a, b))
    model = HOPPER_FAST
    expected = torch.tensor([[_scalar_model(row.float().tolist(), column.float().tolist()) for column in b]
                             for row in a])
    assert torch.equal(tensor_core_sum(a, b, model), expected)
    assert not torch.equal(tensor_core_sum(a, b, Accumulation(32, 13, None)), expected)
    assert model.float32_exact and not Accumulation(32, 17, None).float32_exact


def test_enough_fraction_bits_give_the_exact_sum_and_chunks_change_nothing(monkeypatch):
    a, b = _codes(37, 160, 0), _codes(21, 160, 1)
    exact = (a.double() @ b.double().T).float()
    assert torch.equal(tensor_core_sum(a, b, Accumulation(16, 40, None)), exact)
    hopper = tensor_core_sum(a, b, HOPPER)
    assert not torch.equal(hopper, exact) and (hopper - exact).abs().max() <= 1e-3 * exact.abs().max()
    monkeypatch.setattr(fp8_accumulation, "CHUNK_ELEMENTS", 100)
    assert torch.equal(tensor_core_sum(a, b, HOPPER), hopper)
    assert tensor_core_sum(a[:0], b, HOPPER).shape == (0, 21) and tensor_core_sum(a, b[:0], HOPPER).shape == (37, 0)


#: FP8 codes and the float32 sums an H200's cuBLASLt made of them (run 21's probe, a corner of each of its cases).
GPU_SUMS = Path(__file__).parent / "data" / "h200_fp8_accumulators.safetensors"


@pytest.mark.parametrize("case", ["wide_k256", "benchmark_k3072", "wide_k3072"])
def test_model_equals_the_sums_an_h200_made(case):
    """The model is the GPU's sum to the bit, with and without fast accumulation (K ≤ 3072); the exact float32 sum
    of the same products and the earlier model (groups of 16 aligned to the largest magnitude) are not."""
    with safe_open(GPU_SUMS, "pt") as f:
        a, b = (f.get_tensor(f"{case}.{x}").view(torch.float8_e4m3fn) for x in "ab")
        cublaslt, fast = f.get_tensor(f"{case}.cublaslt"), f.get_tensor(f"{case}.cublaslt_fast_accum")
    assert torch.equal(tensor_core_sum(a, b, HOPPER), cublaslt)
    assert torch.equal(tensor_core_sum(a, b, HOPPER_FAST), fast)
    assert not torch.equal(a.float() @ b.float().T, cublaslt)
    assert not torch.equal(tensor_core_sum(a, b, Accumulation(promote_every=128)), cublaslt)


def test_numerics_switch_is_restored():
    assert EMULATED_FP8["accumulation"] is None
    with tensor_core_numerics():
        assert EMULATED_FP8["accumulation"] is HOPPER
        with tensor_core_numerics(None):
            assert EMULATED_FP8["accumulation"] is None
        assert EMULATED_FP8["accumulation"] is HOPPER
    assert EMULATED_FP8["accumulation"] is None


def _model_scaled_mm(a, b, row_scales, column_scales, bias, out_dtype):
    """A GPU whose FP8 GEMM sums as the model does, with the epilogue ``(acc · rows) · columns + bias``."""
    return (tensor_core_sum(a, b, HOPPER) * row_scales * column_scales + bias.float()).to(out_dtype)


@pytest.mark.parametrize("per_tensor", [True, False], ids=["tensor_wise", "row_wise"])
def test_emulated_layer_with_the_model_computes_what_the_gpu_plan_does(per_tensor, monkeypatch):
    """bf16 inputs: the same codes and folded column scales as the gpu backend's plain static FP8 branch; with the
    model on, the emulated layer equals that branch on a stand-in GPU summing by the model, to the bit; without it,
    it does not. One row runs on the GPU's CUDA-core GEMV, which the model does not describe."""
    module = filled(PLAIN_STATIC_FP8)
    if per_tensor:
        module.weight_scale.fill_(0.0123)
    pack(module)
    monkeypatch.setattr(plan, "static_fp8_fits", lambda module, codes, dtype: True)
    monkeypatch.setattr(plan, "plain_fp8", _model_scaled_mm)
    x = (torch.randn(40, 64) * 3).to(torch.bfloat16)
    gpu = plan.seglinear_forward(module, layout_of(module), x, gemm)
    assert not torch.equal(module(x), gpu)
    with tensor_core_numerics():
        assert torch.equal(module(x), gpu)
        one_row = module(x[:1])
    assert torch.equal(one_row, module(x[:1]))  # float32 either way


@pytest.mark.parametrize("name", ["plain_fp8", "cat_unequal", "dual_fp8_segments"])
def test_emulated_fp8_layers_with_the_model_follow_the_ops_structure(name):
    """Float32 inputs (and layers with input segments or DualScale) take the op, whose twin sums FP8 by the model in
    the INT8 path's structure and order when it is on (``code_scaled_gemm``): the emulated layer gives the same bits,
    and the model changes them."""
    module = pack(filled(SPECS[name]))
    x = torch.randn(33, SPECS[name].in_features) * 2
    with tensor_core_numerics():
        modelled = module(x)
        assert torch.equal(modelled, plan.seglinear_forward(module, layout_of(module), x, gemm))
    assert not torch.equal(modelled, module(x))
