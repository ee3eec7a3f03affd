"""GPU W8A8 path on CUDA: quantizer codes, the Triton/cuBLASLt GEMM against its pure-torch twin, the backend
against the emulated SegLinear, and torch.compile without graph breaks. INT8 x INT8 without a low-rank branch
must match bitwise (exact sums, the same float32 epilogue), everything else within rounding. Skipped without
CUDA; the CPU twin is tested in ``test_gemm_reference.py``."""

import math

import pytest
import torch

from segquant.enums import DType
from segquant.kernels.gemm_reference import scaled_gemm_reference
from segquant.kernels.gpu import ops
from segquant.kernels.gpu.plan import quantize_input
from segquant.kernels.reference import integer_exact
from segquant.nn.spec import SegLinearSpec
from segquant.numerics import PerToken
from tests.kernels.interpret_triton_gemm import CASES as CASES_INTERPRETED
from tests.kernels.interpret_triton_gemm import (GEMV_CASES, TMA_CASES, TMA_HALVES_CASES, TMA_SPLIT_CASES,
                                                 dequantize_case, first_tma_config, one_input_scale,
                                                 persistent_args)
from tests.kernels.interpret_triton_gemm import case as interpreted_case
from tests.kernels.test_gemm_reference import SPECS, filled, pack, rel_err

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
CODES = {DType.INT8: torch.int8, DType.FP8E4M3: torch.float8_e4m3fn}


def poison_allocator() -> None:
    """Fill freed cached memory with NaN so that an output element the kernel never writes shows up."""
    junk = torch.full((64 * 1024 * 1024,), float("nan"), device="cuda")
    del junk


def random_codes(shape, fmt: DType) -> torch.Tensor:
    if fmt is DType.INT8:
        return torch.randint(-128, 128, shape, dtype=torch.int8, device="cuda")
    return (torch.randn(shape, device="cuda") * 64).clamp(-448, 448).to(torch.float8_e4m3fn)


def op_case(fmt, m, n, k, segments=(), dual=False, rows=False, sa=1, bias=True):
    """Random op arguments: ``segments`` = input segment sizes (empty: one segment, fast path)."""
    segs = segments or (k,)
    cols = torch.arange(len(segs), device="cuda").repeat_interleave(torch.tensor(segs, device="cuda")).int()
    a = random_codes((sa, m, 2 * k if dual else k), fmt)
    scale = lambda: torch.rand(sa, m if rows else 1, len(segs), device="cuda") * 0.01 + 1e-3  # noqa: E731
    k_align = 0 if len(segs) == 1 else math.gcd(*torch.tensor(segs).cumsum(0)[:-1].tolist())
    return dict(a=a, b=random_codes((n, k), fmt), a_scale=scale(), a_scale_neg=scale() if dual else None,
                w_scale=torch.rand(n, len(segs), device="cuda") * 0.01 + 1e-3, a_col=cols, w_col=cols.clone(),
                bias=torch.randn(n, device="cuda", dtype=torch.bfloat16) if bias else None, lowrank_t=None,
                lowrank_up=None, out_segment=n // sa,
                scale_mode=2 if len(segs) > 1 else 0, k_align=k_align)


CASES = [  # (m, n, k, segments, dual, rows, sa)
    (1, 64, 128, (), False, False, 1), (2, 40, 96, (), False, True, 1), (7, 3072, 256, (), True, False, 1),
    (333, 200, 512, (), False, True, 1), (4608, 256, 3072, (), False, False, 1), (333, 264, 1024, (), True, True, 1),
    (64, 256, 512, (128,) * 4, False, False, 1), (333, 136, 512, (64,) * 8, True, True, 1),
    (129, 192, 480, (96, 384), False, False, 1), (1, 384, 256, (), False, False, 6), (3, 96, 128, (), True, True, 3),
    (4608, 512, 3072, (128,) * 24, False, True, 1), (4608, 256, 4096, (), True, False, 1),
    (4608, 256, 15360, (3072, 12288), False, True, 1), (300, 200, 2048, (512, 1536), False, False, 1),  # cat layers
]


@pytest.mark.parametrize("fmt", [DType.INT8, DType.FP8E4M3])
@pytest.mark.parametrize("case", CASES, ids=[f"m{c[0]}n{c[1]}k{c[2]}s{len(c[3])}d{int(c[4])}r{int(c[5])}sa{c[6]}"
                                             for c in CASES])
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_gemm_matches_twin(fmt, case, out_dtype):
    m, n, k, segments, dual, rows, sa = case
    args = op_case(fmt, m, n, k, segments, dual, rows, sa)
    poison_allocator()
    y = ops.gemm(**args, out_dtype=out_dtype)
    assert y.shape == (m, n) and y.dtype == out_dtype and torch.isfinite(y).all()
    assert_matches_twin(y, args)


@pytest.mark.parametrize("fmt", [DType.INT8, DType.FP8E4M3])
@pytest.mark.parametrize("case", [CASES[0], CASES[2], CASES[3], CASES[7], CASES[9], CASES[4]],
                         ids=["gemv", "gemv_dual", "tiled", "tiled_segments_dual", "gemv_segments_sa6", "tma"])
def test_bound_launches_compute_what_tritons_launches_do(fmt, case, monkeypatch):
    """With ``BOUND_LAUNCH`` on, the Triton kernels' later calls replay the first launch of their key (the TMA
    kernel's with its config's pre-hook): each of three calls on new tensors (one a view 4 bytes into its storage,
    not 16-byte aligned: a new key) gives the bits Triton's own launch gives, twice over."""
    from segquant.kernels.gpu.bound_launch import clear_bound_launches

    monkeypatch.setitem(ops.USE_SCALED_MM, "enabled", False)  # FP8 on the Triton kernels too
    calls = [op_case(fmt, *case) for _ in range(3)]
    shifted = torch.empty(calls[2]["a"].numel() + 4, dtype=calls[2]["a"].dtype, device="cuda")
    calls[2]["a"] = shifted[4:].view_as(calls[2]["a"]).copy_(calls[2]["a"])
    expected = [ops.gemm(**args, out_dtype=torch.bfloat16) for args in calls]
    monkeypatch.setitem(ops.BOUND_LAUNCH, "enabled", True)
    clear_bound_launches()
    for _ in range(2):
        for args, y in zip(calls, expected):
            poison_allocator()
            assert torch.equal(ops.gemm(**args, out_dtype=torch.bfloat16), y)
    clear_bound_launches()


def within_rounding(ref: torch.Tensor, dtype: torch.dtype) -> float:
    """1e-3 plus the error of rounding the float32 reference itself to ``dtype`` (~1.1e-3 for bf16)."""
    return 1e-3 + rel_err(ref.to(dtype), ref)


def assert_matches_twin(y: torch.Tensor, args) -> None:
    """``y`` against the twin on the op arguments ``args`` (a dict, or a list ending in ``out_dtype``): bitwise for
    INT8 x INT8 without a low-rank branch, else within rounding of the float32 twin."""
    named = args if isinstance(args, dict) else dict(zip(OP_ARGS, args[:-1]))
    if named["a"].dtype == named["b"].dtype == torch.int8 and named["lowrank_t"] is None:
        twin = scaled_gemm_reference(**named, out_dtype=y.dtype)
        assert torch.equal(y, twin), f"{int((y != twin).sum())} of {y.numel()} elements differ"
    else:
        ref = scaled_gemm_reference(**named, out_dtype=torch.float32)
        assert rel_err(y, ref) <= within_rounding(ref, y.dtype)


OP_ARGS = ("a", "b", "a_scale", "a_scale_neg", "w_scale", "a_col", "w_col", "bias", "lowrank_t", "lowrank_up",
           "out_segment", "scale_mode", "k_align")


INT4_CASES = dict(CASES_INTERPRETED,  # plus compute-bound FLUX-like shapes, g64 with the rank-32 branch
                  w4a8_flux_g64_r32=dict(m=4608, n=3072, k=3072, fmt="int8", segments=(64,) * 48, w4=True, rank=32),
                  w4a8_flux_channel=dict(m=4608, n=3072, k=12288, fmt="int8", w4=True),
                  w4a16_m1_g64=dict(m=1, n=3072, k=3072, fmt="int8", segments=(64,) * 48, w4=True, a16=True),
                  w4a16_flux_g64_r32=dict(m=4608, n=3072, k=3072, fmt="int8", segments=(64,) * 48, w4=True,
                                          a16=True, rank=32))


@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("name", list(INT4_CASES))
def test_int4_and_16bit_gemm_matches_twin(name, half):
    """Packed INT4 weights (W4A8 / W4A16), group scales, the low-rank epilogue; the interpreter's cases too."""
    spec = dict(INT4_CASES[name], half=INT4_CASES[name].get("half", half))
    args = [t.cuda() if isinstance(t, torch.Tensor) else t for t in interpreted_case(**spec)]
    poison_allocator()
    y = ops.gemm(*args[:-1], torch.bfloat16)
    assert y.shape == (spec["m"], spec["n"]) and torch.isfinite(y).all()
    assert_matches_twin(y, args)


ONE_INPUT_SCALE_CASES = dict(  # ops.gemm picks: GEMV (M <= 4), tiled kernel, dequantized weight + cuBLAS (M >= 128)
    GEMV_CASES, w4a8_m64_g64_tiled=dict(m=64, n=512, k=1024, fmt="int8", segments=(64,) * 16, w4=True, rank=32),
    w4a8_flux_g64_r32_dequantized=dict(m=4608, n=3072, k=3072, fmt="int8", segments=(64,) * 48, w4=True, rank=32),
    w4a16_flux_g64_dequantized=dict(m=4608, n=3072, k=12288, fmt="int8", segments=(64,) * 192, w4=True, a16=True),
    w4a8_adaln_m1_segments=dict(m=1, n=6 * 512, k=3072, fmt="int8", segments=(64,) * 48, w4=True, sa=6))


@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("name", list(ONE_INPUT_SCALE_CASES))
def test_paths_with_one_input_scale_match_twin(name, half):
    spec = dict(ONE_INPUT_SCALE_CASES[name], half=half)
    args = [t.cuda() if isinstance(t, torch.Tensor) else t for t in one_input_scale(interpreted_case(**spec))]
    poison_allocator()
    y = ops.gemm(*args[:-1], torch.bfloat16)
    assert y.shape == (spec["m"], spec["n"]) and torch.isfinite(y).all()
    assert_matches_twin(y, args)


@pytest.mark.parametrize("name", list(GEMV_CASES))
def test_gemv_kernel_matches_twin(name):
    """The GEMV called directly (``ops`` routes only one row of 8-bit weights to it): every case, both INT8
    inner loops (``dp4a`` words and the per-byte loop)."""
    from segquant.kernels.gpu.triton_gemv import gemv_triton

    args = [t.cuda() if isinstance(t, torch.Tensor) else t
            for t in one_input_scale(interpreted_case(**GEMV_CASES[name]))]
    a, b, a_scale, a_scale_neg, w_scale, _, w_col, bias, t, u, out_segment, _, k_align, out_dtype = args
    poison_allocator()
    y = gemv_triton(a, b, a_scale, a_scale_neg, w_scale, w_col, bias, t, u, out_segment, k_align, out_dtype)
    assert_matches_twin(y, args)


TMA_GPU_CASES = dict(TMA_CASES, tma_int8_flux_ff_up=dict(m=4608, n=12288, k=3072, fmt="int8"),
                     tma_fp8_flux_ff_down_lowrank=dict(m=4608, n=3072, k=12288, fmt="fp8", rank=32),
                     tma_int8_demo_unet=dict(m=2048, n=64, k=64, fmt="int8"),
                     tma_store_int8_flux_out_proj=dict(m=4608, n=3072, k=3072, fmt="int8", tile=(128, 256, 128, 1)),
                     tma_store_halves_int8_flux_out_proj=dict(m=4608, n=3072, k=3072, fmt="int8",
                                                              tile=(128, 256, 128, 2)),
                     tma_store_halves_fp8_flux_out_proj=dict(m=4608, n=3072, k=3072, fmt="fp8",
                                                             tile=(256, 128, 128, 2)))
#: The split last wave: FLUX's 3072 -> 3072 layer (432 tiles of 128 x 256 on 132 SMs), a text-stream layer with
#: fewer tiles than SMs, and odd sizes with bias and the low-rank branch.
#: INT8 only: ``ops`` does not split FP8's last wave along K (see :func:`test_fp8_last_wave_not_split_along_k`).
SPLIT_CASES = dict(TMA_SPLIT_CASES, tma_split_int8_flux_out_proj=dict(m=4608, n=3072, k=3072, fmt="int8"),
                   tma_split_fp8_flux_out_proj=dict(m=4608, n=3072, k=3072, fmt="fp8"),
                   tma_split_int8_ctx_lowrank=dict(m=512, n=3072, k=3072, fmt="int8", rank=32),
                   tma_split_int8_odd=dict(m=999, n=1040, k=2000, fmt="int8"),
                   tma_split_store_int8_flux_proj_out=dict(m=4608, n=3072, k=15360, fmt="int8",
                                                           tile=(128, 256, 128, 2)))
TMA_SPLIT_GPU_CASES = {name: spec for name, spec in SPLIT_CASES.items() if spec["fmt"] == "int8"}


#: The last wave in halves along N: the interpreter's cases, FLUX's 3072 -> 3072 layer (36 tiles in 72 halves) in both
#: formats, and odd sizes with bias and the low-rank branch.
TMA_HALVES_GPU_CASES = dict(TMA_HALVES_CASES, tma_halves_int8_flux_out_proj=dict(m=4608, n=3072, k=3072, fmt="int8"),
                            tma_halves_fp8_flux_out_proj=dict(m=4608, n=3072, k=3072, fmt="fp8"),
                            tma_halves_int8_odd_lowrank=dict(m=999, n=1040, k=2000, fmt="int8", rank=32))
#: ``ops`` kernel name and ``split_tail`` (the name of its value in ``triton_tma``) of each kind of case
TAIL_KERNELS = {"whole": ("tma", "WHOLE_TILES"), "split": ("tma_split_tail", "SPLIT_K"),
                "halves": ("tma_halves_tail", "HALVES_N")}


@pytest.mark.parametrize("name", list(TMA_GPU_CASES) + list(TMA_SPLIT_GPU_CASES) + list(TMA_HALVES_GPU_CASES))
def test_tma_kernel_matches_twin(name, monkeypatch):
    """``ops.gemm`` with the TMA kernel chosen (cuBLASLt off, so FP8 reaches the op too), its last wave split along K
    or in halves along N for those cases, takes the persistent TMA kernel and matches the twin, also when called again
    (the K split's counters reset themselves)."""
    from segquant.kernels.gpu import triton_tma

    kind = "split" if name in TMA_SPLIT_GPU_CASES else "halves" if name in TMA_HALVES_GPU_CASES else "whole"
    kernel, split_name = TAIL_KERNELS[kind]
    split = getattr(triton_tma, split_name)
    calls = []
    launch = triton_tma.tma_gemm_triton
    monkeypatch.setattr(triton_tma, "tma_gemm_triton", lambda *a, **kw: calls.append(kw) or launch(*a, **kw))
    monkeypatch.setitem(ops.USE_TMA, "enabled", True)
    monkeypatch.setattr(ops, "fastest_kernel", lambda key, kernels, **_: kernel)
    monkeypatch.setitem(ops.USE_SCALED_MM, "enabled", False)
    spec = dict({**TMA_GPU_CASES, **TMA_SPLIT_GPU_CASES, **TMA_HALVES_GPU_CASES}[name])
    tile = spec.pop("tile", None)
    args = [t.cuda() if isinstance(t, torch.Tensor) else t for t in persistent_args(spec)]
    assert not split or triton_tma.tail_splits(args[0], args[1], split)
    for _ in range(2):
        poison_allocator()
        with first_tma_config(tile):
            y = ops.gemm(*args[:-1], torch.bfloat16)
        assert calls[-1] == {"split_tail": split}
        assert_matches_twin(y, args)


@pytest.mark.parametrize("name", [name for name, spec in SPLIT_CASES.items() if spec["fmt"] == "fp8"])
def test_fp8_last_wave_not_split_along_k(name, monkeypatch):
    """FP8 shapes whose last wave could split along K are not offered that kernel: its float32 partial sums of K
    pieces would round otherwise than one promoted chain, which the emulated layer models."""
    from segquant.kernels.gpu import triton_tma

    monkeypatch.setitem(ops.USE_TMA, "enabled", True)
    spec = dict(SPLIT_CASES[name])
    spec.pop("tile", None)
    args = [t.cuda() if isinstance(t, torch.Tensor) else t for t in persistent_args(spec)]
    assert triton_tma.tail_splits(args[0], args[1], triton_tma.SPLIT_K)
    offered = ops.gemm_kernels(*args[:-1], torch.bfloat16)
    assert "tma" in offered and "tma_split_tail" not in offered


def test_dequantize_w4_matches_cpu():
    b, scale, cols = dequantize_case(n=3072, k=3072, segments=(64,) * 48)
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        gpu = ops.dequantize_w4(b.cuda(), scale.cuda(), cols.cuda(), dtype).cpu()
        assert torch.equal(gpu, ops.dequantize_w4(b, scale, cols, dtype))


@pytest.mark.parametrize("scaled_mm", [True, False])
def test_fp8_plain_paths_agree(scaled_mm, monkeypatch):
    monkeypatch.setitem(ops.USE_SCALED_MM, "enabled", scaled_mm)
    args = op_case(DType.FP8E4M3, 333, 512, 1024, rows=True)
    y = ops.gemm(**args, out_dtype=torch.bfloat16)
    ref = scaled_gemm_reference(**args, out_dtype=torch.float32)
    assert rel_err(y, ref) <= within_rounding(ref, torch.bfloat16)


GPU_SPECS = dict(SPECS, big_heads=SegLinearSpec(1024, 384, (384,), (128,) * 8, DType.INT8, weight_scale_columns=8),
                 big_dual_fp8=SegLinearSpec(1024, 256, (256,), (1024,), DType.FP8E4M3, weight_dtype=DType.FP8E4M3,
                                            dual_scale=True, smooth=True),
                 adaln6=SegLinearSpec(256, 6 * 64, (64,) * 6, (256,), DType.INT8, smooth=True, low_rank=4),
                 plain_fp8_cublas=SegLinearSpec(256, 128, (128,), (256,), DType.FP8E4M3, weight_dtype=DType.FP8E4M3,
                                                smooth=True),
                 dyn_fp8=SegLinearSpec(512, 128, (128,), (512,), DType.FP8E4M3, weight_dtype=DType.FP8E4M3,
                                       input_dynamic=True, input_granularity=PerToken()),
                 cat_split=SegLinearSpec(4096, 256, (256,), (1024, 3072), DType.INT8, input_dynamic=True,
                                         input_granularity=PerToken(), weight_scale_columns=2),
                 cat_split_static=SegLinearSpec(4096, 256, (256,), (1024, 3072), DType.INT8, weight_scale_columns=2))
RUNNABLE = [name for name, s in GPU_SPECS.items() if s.in_features % 32 == 0 and all(
    size % 32 == 0 for size in s.input_segments) and not (s.has_smooth_buffer and s.output_segments[0] % 32)]


def as_ints(codes: torch.Tensor) -> torch.Tensor:
    return (codes.view(torch.uint8) if codes.dtype == torch.float8_e4m3fn else codes).cpu().int()


@pytest.mark.parametrize("name", RUNNABLE)
def test_quantizer_codes_on_gpu_equal_cpu(name):
    """Static codes are bitwise those of the CPU. Dynamic scales may differ by an ulp (CUDA divides by a
    scalar as a multiplication by its reciprocal), so a code may move by one step, rarely."""
    module = pack(filled(GPU_SPECS[name]))
    x = torch.randn(9, GPU_SPECS[name].in_features) * 3
    cpu = quantize_input(module, x)
    gpu = quantize_input(pack(module.cuda()), x.cuda())
    if not GPU_SPECS[name].input_dynamic:
        assert torch.equal(as_ints(cpu[0]), as_ints(gpu[0]))
        return
    for c, g in zip(cpu[1:], gpu[1:]):
        if c is not None:
            torch.testing.assert_close(g.cpu(), c, rtol=1e-6, atol=0)
    moved = (as_ints(cpu[0]) != as_ints(gpu[0])).float().mean().item()
    assert moved <= 1e-3


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=["bf16", "fp16", "fp32"])
@pytest.mark.parametrize("name", RUNNABLE)
def test_backend_matches_emulated(name, dtype):
    from segquant.kernels.gpu.backend import GpuBackend

    module = filled(GPU_SPECS[name]).cuda()
    backend = GpuBackend()
    backend.check(module, name)
    backend.pack(module)
    x = (torch.randn(2, 333, GPU_SPECS[name].in_features, device="cuda") * 2).to(dtype)
    y = backend.forward(module, x)
    ref = module(x.float())
    assert y.dtype == dtype and torch.isfinite(y).all()
    if integer_exact(module.canonical_buffers(), module.spec) and module.lowrank_up is None:
        assert torch.equal(y, ref.to(dtype))  # the same codes, exact sums, the same epilogue
    else:
        assert rel_err(y, ref) <= within_rounding(ref, dtype)


def test_static_fp8_with_one_weight_scale_takes_the_tensor_wise_gemm(monkeypatch):
    """Per-tensor FP8 weights: ``torch._scaled_mm`` gets 0-dim scales (its tensor-wise GEMM, cuBLASLt) and the layer
    matches the emulated one within bf16 rounding, eager and compiled without graph breaks."""
    from segquant.kernels.gpu import plan
    from segquant.kernels.gpu.backend import GpuBackend

    module = filled(GPU_SPECS["plain_fp8_cublas"]).cuda()
    module.weight_scale.fill_(0.01)
    backend = GpuBackend()
    backend.pack(module)
    scale_shapes = []
    launch = plan.plain_fp8
    monkeypatch.setattr(plan, "plain_fp8", lambda a, b, rows, columns, *rest: scale_shapes.append(
        (rows.shape, columns.shape)) or launch(a, b, rows, columns, *rest))
    x = (torch.randn(2, 333, 256, device="cuda") * 2).to(torch.bfloat16)
    y = backend.forward(module, x)
    assert scale_shapes == [((), ())]
    ref = module(x.float())
    assert rel_err(y, ref) <= within_rounding(ref, torch.bfloat16)
    monkeypatch.undo()
    compiled = torch.compile(lambda t: backend.forward(module, t), fullgraph=True)
    assert rel_err(compiled(x), y) <= within_rounding(y, torch.bfloat16)


@pytest.mark.parametrize("name", ["big_heads", "big_dual_fp8", "adaln6", "dyn_fp8", "plain_fp8_cublas", "cat_split"])
def test_compiled_backend_has_no_graph_breaks(name):
    from segquant.kernels.gpu.backend import GpuBackend

    module = filled(GPU_SPECS[name]).cuda()
    backend = GpuBackend()
    backend.pack(module)
    x = torch.randn(77, GPU_SPECS[name].in_features, device="cuda", dtype=torch.bfloat16)
    compiled = torch.compile(lambda t: backend.forward(module, t), fullgraph=True)
    eager = backend.forward(module, x.float())
    assert rel_err(compiled(x), eager) <= within_rounding(eager, torch.bfloat16)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("rows", [3, 333])
def test_two_level_int4_backend_matches_emulated(rows, dtype):
    """Two-level INT4 group scales: the GEMV / tiled path below DEQUANTIZE_MIN_M rows, the INT8 GEMM on the
    expanded weight ``code · step`` from it (smoothing and the rank-4 branch included)."""
    from segquant.kernels.gpu.backend import GpuBackend

    spec = SegLinearSpec(1024, 384, (384,), (1024,), DType.INT8, weight_dtype=DType.INT4, weight_scale_columns=16,
                         weight_two_level=True, smooth=True, low_rank=4)
    module = filled(spec).cuda()
    backend = GpuBackend()
    backend.check(module, "two_level")
    backend.pack(module)
    assert hasattr(module, "gpu_zero_col")
    x = (torch.randn(rows, 1024, device="cuda") * 2).to(dtype)
    y = backend.forward(module, x)
    ref = module(x.float())
    assert y.dtype == dtype and torch.isfinite(y).all()
    assert rel_err(y, ref) <= within_rounding(ref, dtype)


@pytest.mark.parametrize(("group", "promote_every", "product_exponents"),
                         [(16, 128, False), (16, None, False), (32, 128, True), (32, None, True)],
                         ids=["promoted", "fast", "product_exponents_promoted", "product_exponents_fast"])
def test_fp8_emulation_kernel_equals_the_torch_model_on_the_gpu(group, promote_every, product_exponents):
    """The tensor-core FP8 model on CUDA (its Triton kernel) against the pure-torch loop on the CPU, bitwise, at a
    FLUX-like depth; magnitude-aligned, and aligned to the products' exponents with truncated group sums."""
    from segquant.kernels.fp8_accumulation import Accumulation, tensor_core_sum

    model = Accumulation(group, 13, promote_every, product_exponents=product_exponents,
                         truncate_result=product_exponents)
    a, b = random_codes((70, 3072), DType.FP8E4M3), random_codes((48, 3072), DType.FP8E4M3)
    assert torch.equal(tensor_core_sum(a, b, model).cpu(), tensor_core_sum(a.cpu(), b.cpu(), model))
