"""``torch.library`` ops ``segquant::scaled_gemm`` and ``segquant::dequantize_w4``: CUDA -> Triton, other devices ->
the pure-torch twin, plus fake implementations so ``torch.compile`` traces them without graph breaks.

:func:`gemm` is the one entry point (the backend, tests and benchmarks call it). It picks, on CUDA:

- plain FP8 layers: ``torch._scaled_mm`` (an aten op that ``torch.compile`` lowers itself, with no Python dispatch
  per call; row-wise scales run a CUTLASS kernel of PyTorch's on sm_90, one scale for the product cuBLASLt) unless
  ``USE_SCALED_MM`` is off;
- packed INT4 weights with at least ``DEQUANTIZE_MIN_M`` rows (compute-bound), one input, no DualScale and
  an input scale constant along K: the weight dequantized to 16 bits in one pass (the same rounding as the
  tiled kernel: fp16 for INT8 codes, the input's dtype for W4A16), then a cuBLAS product with float32
  output and the scales, bias and low-rank branch as one elementwise epilogue (fused by the compiler);
- everything else: the custom op, whose CUDA kernel is the GEMV (packed INT4 up to ``GEMV_MAX_M`` rows,
  8-bit weights with one scale per row up to ``GEMV_MAX_M_8BIT``, an input scale constant along K; see
  :mod:`.triton_gemv`), else the fastest for the shape, measured at its first call, of the tiled Triton kernel
  (:mod:`.triton_gemm`) and, where it fits (``USE_TMA``), the persistent TMA kernel (:mod:`.triton_tma`) with
  its last partial wave as whole tiles, split along K or in halves along N, and for INT8 on sm_90 (``USE_WGMMA``)
  the Gluon kernels (:mod:`.gluon_wgmma`: one tensor-core step kept in flight; per-K-tile scales rescaled while the
  next MMA runs).
  Plain FP8 layers with that few rows take the GEMV too.

Arguments and math: :func:`segquant.kernels.gemm_reference.scaled_gemm_reference`. Importing this module does
not import Triton (the CUDA implementations import it on first call).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from typing import Callable, Iterator, Optional

import torch
from torch import Tensor

from segquant.kernels.gemm_reference import INT4_COMPUTE, input_scale_varies, scaled_gemm_reference
from segquant.kernels.gpu.bound_launch import BOUND_LAUNCH
from segquant.kernels.layout import GEMV_MAX_M_8BIT
from segquant.numerics import unpack_int4

#: Plain FP8 layers (no per-tile scales, no DualScale, one input) run on ``torch._scaled_mm`` when True.
USE_SCALED_MM = {"enabled": True}
#: Opt-in: ``torch._scaled_mm``'s FP8 products accumulate without the periodic float32 promotion
#: (``use_fast_accum``, what torchao's FP8 linear passes): ≈ 7 % faster FP8 GEMMs on an H200, at an accumulation
#: error the emulated backend does not model (measured per layer by ``benchmarks/e2e_w8a8.py``'s ``sq_fp8_fast``
#: variant).
FP8_FAST_ACCUM = {"enabled": False}
#: Rows from which packed INT4 layers dequantize the weight and use cuBLAS (see the module doc).
DEQUANTIZE_MIN_M = 128
#: Rows up to which the CUDA-core GEMV beats a tensor-core tile (weight-bound layers), when enabled: packed
#: INT4 up to 4 rows; 8-bit weights ``layout.GEMV_MAX_M_8BIT`` (one row).
GEMV_MAX_M = 4
USE_GEMV = {"enabled": True}
#: Compute-bound 8-bit layers with one input and scales constant along K may run on the persistent TMA kernel
#: (:mod:`.triton_tma`): when True, the first call of each shape times it, its variants with the last partial wave
#: split along K or in halves along N (only where a tile config splits it) and the tiled kernel (the same numerics;
#: INT8 to the bit), each replayed from a CUDA graph (timed eagerly, it took the slower kernel for 2 of 9 FLUX shapes
#: in run 11), and keeps the fastest.
#: On an H200 the TMA kernel is faster on the FLUX / SD3.5 image-stream shapes and the tiled kernel's 64-row tiles
#: on some text-stream ones (BENCHMARKS.md, runs 10-11), hence a measured choice. False: always the tiled kernel.
USE_TMA = {"enabled": True}
#: INT8 layers that fit the persistent TMA kernel, without a low-rank branch, on sm_90, may also run on the Gluon
#: kernel (:mod:`.gluon_wgmma`, one tensor-core step kept in flight, which Triton's pipeliner does not do for int32
#: accumulators; DualScale layers with both products per weight tile in flight), and per-K-tile scaled INT8 layers
#: (per-head input segments) on its variant that rescales one K tile while the next one's MMA runs: when True they
#: join the first-call timing. Every INT8 candidate computes the same
#: bits, so a candidate whose output differs from the tiled kernel's on that first call is left out, with a warning.
#: Off unless ``SEGQUANT_GLUON_KERNELS=1`` is in the environment: on the H200 (run 15) they equal the twin bitwise, but
#: the plain one was 8 % slower than the persistent Triton kernel on FLUX's ``proj_out`` and never won a FLUX INT8
#: shape's first-call timing, where each of its configs is compiled and timed (BENCHMARKS.md, "Run 15").
USE_WGMMA = {"enabled": os.environ.get("SEGQUANT_GLUON_KERNELS") == "1"}
#: The kernel :func:`fastest_kernel` chose, per ``(shape key, candidate names)``.
_FASTEST: dict = {}
_SWITCHES = {"USE_SCALED_MM": USE_SCALED_MM, "FP8_FAST_ACCUM": FP8_FAST_ACCUM, "USE_GEMV": USE_GEMV,
             "USE_TMA": USE_TMA, "USE_WGMMA": USE_WGMMA, "BOUND_LAUNCH": BOUND_LAUNCH}


@contextlib.contextmanager
def switched(**values: bool) -> Iterator[None]:
    """The routing switches of this module set for a block, e.g. ``with switched(USE_TMA=True): ...``
    (restored on exit; a compiled model keeps what it was compiled with)."""
    unknown = set(values) - set(_SWITCHES)
    if unknown:
        raise ValueError(f"unknown switch(es) {sorted(unknown)}; choose from {', '.join(_SWITCHES)}")
    saved = {name: _SWITCHES[name]["enabled"] for name in values}
    try:
        for name, value in values.items():
            _SWITCHES[name]["enabled"] = bool(value)
        yield
    finally:
        for name, value in saved.items():
            _SWITCHES[name]["enabled"] = value


#: Rows of the shared all-ones row-scale vector of static FP8 layers (see :func:`unit_row_scales`).
UNIT_ROWS = 1 << 16
_UNIT_ROW_SCALES: dict = {}


#: The ``segquant`` operator library. Its ops are defined and implemented on it directly, not through
#: ``torch.library.custom_op``, whose Python layers around every call (an autograd wrapper, a check that the output
#: aliases no input, a guard against dynamo) cost 20–21 against 8 µs per call of the op's schema under
#: ``torch.no_grad`` on the CPU, as diffusers pipelines run, and 11–12 against 8 under ``torch.inference_mode``
#: (``benchmarks/host_python.py``, two runs). The kernels behind both are the same.
_LIBRARY = torch.library.Library("segquant", "FRAGMENT")


def _define(schema: str, reference: Callable, cuda: Callable, fake: Callable):
    """The op ``segquant::<schema>``: ``reference`` (the pure-torch twin) on every device but CUDA, ``cuda`` on
    CUDA tensors, ``fake`` for the compiler's tracing (shapes and dtypes only). It has no autograd formula."""
    name = schema.split("(", 1)[0]
    _LIBRARY.define(schema)
    _LIBRARY.impl(name, reference, "CompositeExplicitAutograd")
    _LIBRARY.impl(name, cuda, "CUDA")
    torch.library.register_fake(f"segquant::{name}", fake, lib=_LIBRARY)
    return getattr(torch.ops.segquant, name).default


def _scaled_gemm_cuda(a, b, a_scale, a_scale_neg, w_scale, a_col, w_col, bias, lowrank_t, lowrank_up, out_segment,
                      scale_mode, k_align, out_dtype):
    return routed_kernel(a, b, a_scale, a_scale_neg, w_scale, a_col, w_col, bias, lowrank_t, lowrank_up, out_segment,
                         scale_mode, k_align, out_dtype)()


def _scaled_gemm_fake(a, b, a_scale, a_scale_neg, w_scale, a_col, w_col, bias, lowrank_t, lowrank_up, out_segment,
                      scale_mode, k_align, out_dtype):
    return a.new_empty((a.shape[1], b.shape[0]), dtype=out_dtype)


#: ``segquant::scaled_gemm``: the scaled GEMM ``(Sa, M, KA) x (N, K) -> (M, N)`` with 8- or 4-bit weights (the exact
#: formula: :func:`scaled_gemm_reference`, its CPU kernel); on CUDA the kernel :func:`routed_kernel` picks.
scaled_gemm = _define(
    "scaled_gemm(Tensor a, Tensor b, Tensor a_scale, Tensor? a_scale_neg, Tensor w_scale, Tensor a_col, Tensor w_col, "
    "Tensor? bias, Tensor? lowrank_t, Tensor? lowrank_up, int out_segment, int scale_mode, int k_align, "
    "ScalarType out_dtype) -> Tensor", scaled_gemm_reference, _scaled_gemm_cuda, _scaled_gemm_fake)


def routed_kernel(a, b, a_scale, a_scale_neg, w_scale, a_col, w_col, bias, lowrank_t, lowrank_up, out_segment,
                  scale_mode, k_align, out_dtype) -> Callable[[], Tensor]:
    """The CUDA kernel the op runs on these arguments, as a call without arguments: the GEMV where it fits, else the
    fastest of :func:`gemm_kernels` (:func:`fastest_kernel`)."""
    import triton

    from segquant.kernels.gpu.triton_gemv import gemv_triton

    if _gemv_fits(a, b, a_scale, scale_mode):
        return lambda: gemv_triton(a, b, a_scale, a_scale_neg, w_scale, w_col, bias, lowrank_t, lowrank_up,
                                   out_segment, k_align, out_dtype)
    kernels = gemm_kernels(a, b, a_scale, a_scale_neg, w_scale, a_col, w_col, bias, lowrank_t, lowrank_up,
                           out_segment, scale_mode, k_align, out_dtype)
    if len(kernels) == 1:
        return kernels["tiled"]
    key = (a.device, a.dtype, triton.next_power_of_2(a.shape[1]), b.shape, bias is None, lowrank_t is None, out_dtype,
           scale_mode, k_align, a_scale.shape[2])
    return kernels[fastest_kernel(key, kernels, exact=a.dtype == b.dtype == torch.int8)]


def gemm_kernels(a, b, a_scale, a_scale_neg, w_scale, a_col, w_col, bias, lowrank_t, lowrank_up, out_segment,
                 scale_mode, k_align, out_dtype) -> dict[str, Callable[[], Tensor]]:
    """The GEMM kernels that can compute the op's arguments (past the GEMV), by :func:`fastest_kernel`'s names:
    ``tiled`` always; ``tma`` where the persistent kernel fits (``USE_TMA``), and ``tma_split_tail`` /
    ``tma_halves_tail`` where its last wave splits along K / into halves along N; ``wgmma`` / ``wgmma_tile_scaled``
    where a Gluon kernel fits (``USE_WGMMA``)."""
    from segquant.kernels.gpu.triton_gemm import scaled_gemm_triton
    from segquant.kernels.gpu.triton_tma import HALVES_N, SPLIT_K, WHOLE_TILES, tail_splits, tma_fits, tma_gemm_triton

    def tiled():
        return scaled_gemm_triton(a, b, a_scale, a_scale_neg, w_scale, a_col, w_col, bias, lowrank_t, lowrank_up,
                                  out_segment, scale_mode, k_align, out_dtype)

    def tma(split_tail: int = WHOLE_TILES):
        return tma_gemm_triton(a, b, a_scale, w_scale, a_col, w_col, bias, lowrank_t, lowrank_up, out_dtype,
                               split_tail=split_tail)

    input_varies = input_scale_varies(a_scale, scale_mode)
    kernels = {"tiled": tiled}
    if USE_TMA["enabled"] and tma_fits(a, b, a_scale_neg, scale_mode, input_varies):
        kernels["tma"] = tma
        for name, split in (("tma_split_tail", SPLIT_K), ("tma_halves_tail", HALVES_N)):
            # FP8's K split adds float32 partial sums of K pieces: another rounding than one promoted chain
            if tail_splits(a, b, split) and (split != SPLIT_K or a.dtype == torch.int8):
                kernels[name] = lambda split=split: tma(split)
    gluon = _gluon_kernels() if USE_WGMMA["enabled"] else None
    if gluon is not None and (gluon.wgmma_fits(a, b, a_scale_neg, lowrank_t, scale_mode, input_varies)
                              or gluon.dual_fits(a, b, a_scale_neg, lowrank_t, scale_mode, input_varies)):
        kernels["wgmma"] = lambda: gluon.wgmma_gemm_gluon(a, b, a_scale, a_scale_neg, w_scale, a_col, w_col, bias,
                                                          out_dtype)
    if gluon is not None and gluon.tile_scaled_fits(a, b, a_scale, a_scale_neg, lowrank_t, scale_mode, k_align):
        kernels["wgmma_tile_scaled"] = lambda: gluon.wgmma_tile_scaled_gluon(a, b, a_scale, w_scale, a_col, w_col,
                                                                            bias, k_align, out_dtype)
    return kernels


def _gluon_kernels():
    """:mod:`.gluon_wgmma`, or None where this Triton has no Gluon for Hopper (before 3.5) or names its pieces
    otherwise."""
    try:
        import segquant.kernels.gpu.gluon_wgmma as gluon_wgmma
    except (ImportError, AttributeError):
        return None
    return gluon_wgmma


def fastest_kernel(key: tuple, kernels: dict[str, Callable[[], Tensor]], exact: bool = False) -> str:
    """The name of the fastest of ``kernels`` (the same product on different kernels) for the shape ``key``, all
    timed at its first call and remembered. While a CUDA graph is being captured nothing can be timed: the first
    kernel, not remembered. A kernel without a tile that fits the shared memory (float32 output of the largest tile
    when autotuning is off) counts as slowest. ``exact``: the kernels compute the same bits (INT8 x INT8), so those
    whose output differs from the first's are left out first (:func:`agreeing`). Remembered per set of candidates: with
    a switch turned (``USE_WGMMA`` off, say) the shape is timed again among the kernels it leaves."""
    remembered = (key, tuple(kernels))
    if remembered not in _FASTEST:
        if torch.cuda.is_current_stream_capturing():
            return next(iter(kernels))
        from triton.runtime.errors import OutOfResources

        from segquant.kernels.gpu.triton_gemm import graph_timed

        def timed(kernel: Callable[[], Tensor]) -> float:
            try:
                return graph_timed(kernel, None)
            except OutOfResources:
                return float("inf")

        times = {name: timed(kernel) for name, kernel in (agreeing(key, kernels) if exact else kernels).items()}
        _FASTEST[remembered] = min(times, key=times.get)
    return _FASTEST[remembered]


def agreeing(key: tuple, kernels: dict[str, Callable[[], Tensor]]) -> dict[str, Callable[[], Tensor]]:
    """Those of ``kernels`` that return, on this call's input, the output of the first one that runs, to the bit; each
    other one is named in a warning (a kernel fault on this GPU or Triton version must not decide the model's
    numbers). A kernel without a tile that fits the shared memory is left out silently (all of them if none runs:
    the caller's timing then meets the error)."""
    from triton.runtime.errors import OutOfResources

    kept, first = {}, None
    for name, kernel in kernels.items():
        try:
            out = kernel()
        except OutOfResources:
            continue
        if first is None:
            first = out
        elif not torch.equal(out, first):
            warnings.warn(f"segquant: the {name!r} GEMM kernel differs from the {next(iter(kept))!r} one on shape "
                          f"{key}; it is not used for that shape", RuntimeWarning, stacklevel=2)
            continue
        kept[name] = kernel
    return kept or kernels


def gemm(a: Tensor, b: Tensor, a_scale: Tensor, a_scale_neg: Optional[Tensor], w_scale: Tensor, a_col: Tensor,
         w_col: Tensor, bias: Optional[Tensor], lowrank_t: Optional[Tensor], lowrank_up: Optional[Tensor],
         out_segment: int, scale_mode: int, k_align: int, out_dtype: torch.dtype) -> Tensor:
    """The op's math; plain FP8 on CUDA without the custom op (``torch._scaled_mm``, visible to the compiler)."""
    if a.is_cuda and _scaled_mm_fits(a, b, a_scale_neg, lowrank_t, scale_mode, out_dtype) and not _gemv_fits(
            a, b, a_scale, scale_mode):
        return plain_fp8(a[0], b, a_scale[0].expand(a.shape[1], 1).contiguous(), w_scale[:, :1].reshape(1, -1), bias,
                         out_dtype)
    if (a.is_cuda and b.dtype == torch.uint8 and a.shape[0] == 1 and a.shape[1] >= DEQUANTIZE_MIN_M
            and _w4_simple(a_scale, a_scale_neg, scale_mode)):
        return _dequantized_w4(a, b, a_scale, w_scale, w_col, bias, lowrank_t, lowrank_up, out_dtype)
    return scaled_gemm(a, b, a_scale, a_scale_neg, w_scale, a_col, w_col, bias, lowrank_t, lowrank_up, out_segment,
                       scale_mode, k_align, out_dtype)


def _gemv_fits(a: Tensor, b: Tensor, a_scale: Tensor, scale_mode: int) -> bool:
    """The GEMV takes at most ``GEMV_MAX_M`` rows of packed INT4 or ``GEMV_MAX_M_8BIT`` rows of 8-bit weights
    with one input scale column (it reads column 0; a K block of a split layer names another in ``a_col``), and
    8-bit weights only with one weight scale per row (``scale_mode`` 0)."""
    packed = b.dtype == torch.uint8
    return (USE_GEMV["enabled"] and a.shape[1] <= (GEMV_MAX_M if packed else GEMV_MAX_M_8BIT)
            and a_scale.shape[2] == 1 and (packed or scale_mode == 0))


def _scaled_mm_fits(a: Tensor, b: Tensor, a_scale_neg, lowrank_t, scale_mode: int, out_dtype: torch.dtype) -> bool:
    return (USE_SCALED_MM["enabled"] and b.dtype == torch.float8_e4m3fn and scale_mode == 0 and a_scale_neg is None
            and lowrank_t is None and a.shape[0] == 1 and out_dtype == torch.bfloat16 and b.shape[0] % 16 == 0
            and b.shape[1] % 16 == 0)


def plain_fp8(a: Tensor, b: Tensor, row_scales: Tensor, column_scales: Tensor, bias: Tensor | None,
              out_dtype: torch.dtype) -> Tensor:
    """``torch._scaled_mm``'s FP8 GEMM: ``a`` ``(M, K)`` and ``b`` ``(N, K)`` E4M3 codes, ``row_scales``
    ``(M, 1)`` and ``column_scales`` ``(1, N)`` float32 -> ``(M, N)`` (``scale_mode`` 0: every input channel
    uses weight-scale column 0, see ``plan.weight_columns``). Row-wise scales run a CUTLASS kernel of PyTorch's on
    sm_90; 0-dim ``row_scales`` and ``column_scales`` (one scale for the product) run cuBLASLt's tensor-wise GEMM."""
    return torch._scaled_mm(a, b.t(), scale_a=row_scales, scale_b=column_scales,
                            bias=bias.to(out_dtype) if bias is not None else None, out_dtype=out_dtype,
                            use_fast_accum=FP8_FAST_ACCUM["enabled"])


def unit_row_scales(device: torch.device) -> Tensor:
    """``(UNIT_ROWS, 1)`` float32 ones on ``device``, one tensor shared by every static FP8 layer: their input
    scale is folded into the column scales, so a call slices its row scales from this (no kernel per call)."""
    key = torch.device(device)
    if key not in _UNIT_ROW_SCALES:
        _UNIT_ROW_SCALES[key] = torch.ones(UNIT_ROWS, 1, device=key)
    return _UNIT_ROW_SCALES[key]


def _dequantize_w4_reference(b: Tensor, w_scale: Tensor, w_col: Tensor, dtype: torch.dtype) -> Tensor:
    """Packed INT4 ``(N, K/2)`` -> ``code · w_scale[n, w_col[k]]`` ``(N, K)`` in ``dtype`` (rounded once).
    ``w_scale`` uint8 (two-level steps 1..16) with ``dtype`` int8: the exact INT8 weight ``code · step``."""
    codes = unpack_int4(b, w_col.shape[0])
    if w_scale.dtype == torch.uint8:
        return (codes.to(torch.int16) * w_scale[:, w_col.long()]).to(dtype)
    return (codes.float() * w_scale[:, w_col.long()]).to(dtype)


def _dequantize_w4_cuda(b, w_scale, w_col, dtype):
    from segquant.kernels.gpu.triton_w4 import dequantize_w4_triton

    return dequantize_w4_triton(b, w_scale, w_col, dtype)


def _dequantize_w4_fake(b, w_scale, w_col, dtype):
    return b.new_empty((b.shape[0], w_col.shape[0]), dtype=dtype)


#: ``segquant::dequantize_w4``: packed INT4 weights to ``dtype`` (:func:`_dequantize_w4_reference`); a Triton kernel
#: on CUDA.
dequantize_w4 = _define("dequantize_w4(Tensor b, Tensor w_scale, Tensor w_col, ScalarType dtype) -> Tensor",
                        _dequantize_w4_reference, _dequantize_w4_cuda, _dequantize_w4_fake)


def _w4_simple(a_scale: Tensor, a_scale_neg: Optional[Tensor], scale_mode: int) -> bool:
    """No DualScale and one input scale along K (the GEMV and the dequantized path need no per-tile scales)."""
    return a_scale_neg is None and not input_scale_varies(a_scale, scale_mode)


def _dequantized_w4(a: Tensor, b: Tensor, a_scale: Tensor, w_scale: Tensor, w_col: Tensor, bias: Optional[Tensor],
                    lowrank_t: Optional[Tensor], lowrank_up: Optional[Tensor], out_dtype: torch.dtype) -> Tensor:
    """Compute-bound packed INT4: ``a`` ``(1, M, K)`` INT8 codes (fp16, exact) or 16-bit / float32 inputs
    (W4A16, whose ``a_scale`` is 1: without a low-rank branch, one cuBLAS call with the bias in its epilogue
    writes the 16-bit output directly)."""
    compute = INT4_COMPUTE.get(a.dtype, a.dtype)
    x = a[0].to(compute)
    w = dequantize_w4(b, w_scale, w_col, compute)
    if compute == out_dtype != torch.float32 and a.dtype != torch.int8 and lowrank_t is None:
        return torch.addmm(bias.to(compute), x, w.t()) if bias is not None else x @ w.t()
    y = _mm_float32(x, w) * a_scale[0]
    if bias is not None:
        y = y + bias.float()
    if lowrank_t is not None:
        y = y + _mm_float32(lowrank_t, lowrank_up)
    return y.to(out_dtype)


def _mm_float32(x: Tensor, w: Tensor) -> Tensor:
    """``x (M, K) @ w (N, K)ᵀ`` with a float32 result (16-bit operands: float32 accumulation and output)."""
    return x @ w.t() if x.dtype == torch.float32 else torch.mm(x, w.t(), out_dtype=torch.float32)
