"""Run the Triton scaled-GEMM kernel in Triton's CPU interpreter against its pure-torch twin (a subprocess of
``test_triton_interpreted.py``: ``TRITON_INTERPRET=1`` must be set before Triton is imported).

Prints one ``name rel_err equal`` line per case (``equal``: bitwise, what INT8 x INT8 must be, see
:func:`exact_integer_case`). Covers what CPU-only CI cannot run on a GPU: the kernel's index
math (packed INT4 unpacking, per-K-tile scales, DualScale, output segments, the low-rank epilogue, 16-bit
inputs, masks for odd sizes). 16-bit tensors are fp16 here: the interpreter's bf16 dot is wrong (NumPy has no bf16).
"""

import contextlib
import json
import math
import os
import random
import sys

import torch

from segquant.kernels.gemm_reference import scaled_gemm_reference
from segquant.numerics import pack_int4


def case(m, n, k, fmt, segments=(), dual=False, sa=1, w4=False, a16=False, rank=0, seed=0, half=torch.float16,
         block=None):
    """Random arguments of the op (CPU tensors); ``half`` is the dtype of 16-bit inputs and the low-rank factors;
    ``block`` ``(start, end)``: those of one constant-scale K block (:func:`k_block`)."""
    if block is not None:
        return k_block(case(m, n, k, fmt, segments, dual, sa, w4, a16, rank, seed, half), *block)
    g = torch.Generator().manual_seed(seed)
    segs = segments or (k,)
    cols = torch.arange(len(segs)).repeat_interleave(torch.tensor(segs)).int()
    if a16:
        a = torch.randn(1, m, k, generator=g).to(half)
    elif fmt == "int8":
        a = torch.randint(-128, 128, (sa, m, 2 * k if dual else k), generator=g, dtype=torch.int8)
    else:
        a = (torch.randn(sa, m, 2 * k if dual else k, generator=g) * 64).clamp(-448, 448).to(torch.float8_e4m3fn)
    if w4:
        b = pack_int4(torch.randint(-8, 8, (n, k), generator=g, dtype=torch.int8))
    elif fmt == "int8":
        b = torch.randint(-128, 128, (n, k), generator=g, dtype=torch.int8)
    else:
        b = (torch.randn(n, k, generator=g) * 64).clamp(-448, 448).to(torch.float8_e4m3fn)
    scale = lambda: torch.rand(a.shape[0], m, len(segs), generator=g) * 0.01 + 1e-3  # noqa: E731
    a_scale = torch.ones(1, 1, 1) if a16 else scale()
    k_align = 0 if len(segs) == 1 else math.gcd(*torch.tensor(segs).cumsum(0)[:-1].tolist())
    lowrank = (torch.randn(m, rank, generator=g).to(half),
               torch.randn(n, rank, generator=g).to(half)) if rank else (None, None)
    a_col = torch.zeros_like(cols) if a16 else cols  # 16-bit inputs: one unit "scale"
    return (a, b, a_scale, scale() if dual else None, torch.rand(n, len(segs), generator=g) * 0.01 + 1e-3, a_col,
            cols, torch.randn(n, generator=g).to(torch.bfloat16), *lowrank, n // a.shape[0],
            2 if len(segs) > 1 else 0, k_align, torch.float32)


CASES = {
    "int8_plain_odd": dict(m=33, n=64, k=96, fmt="int8"),
    "fp8_heads": dict(m=17, n=64, k=256, fmt="fp8", segments=(64,) * 4),
    "int8_dual_segments": dict(m=20, n=32, k=128, fmt="int8", segments=(64, 64), dual=True),
    "int8_out_segments": dict(m=5, n=96, k=64, fmt="int8", sa=3),
    "int8_cat_long_segments": dict(m=33, n=64, k=2048, fmt="int8", segments=(512, 1536)),  # a cat like FLUX's
    "int8_cat_block_in_place": dict(m=33, n=64, k=2048, fmt="int8", segments=(512, 1536), block=(512, 2048)),
    "fp8_cat_long_segments": dict(m=20, n=32, k=1536, fmt="fp8", segments=(1024, 512)),
    "w4a8_plain": dict(m=33, n=64, k=128, fmt="int8", w4=True),
    "w4a8_odd_k": dict(m=7, n=32, k=80, fmt="int8", w4=True),
    "w4a8_group64_lowrank": dict(m=24, n=64, k=256, fmt="int8", segments=(64,) * 4, w4=True, rank=32),
    "w4a8_group128_one_group": dict(m=80, n=256, k=384, fmt="int8", segments=(128,) * 3, w4=True),
    "w4a8_dual": dict(m=9, n=32, k=128, fmt="int8", dual=True, w4=True),
    "w4a16_plain": dict(m=16, n=32, k=128, fmt="int8", w4=True, a16=True),
    "w4a16_group32_lowrank5": dict(m=3, n=64, k=128, fmt="int8", segments=(32,) * 4, w4=True, a16=True, rank=5),
    "w4a16_fp32_inputs": dict(m=5, n=32, k=64, fmt="int8", w4=True, a16=True, half=torch.float32),
}
#: The GEMV (a few rows, input scale constant along K): packed INT4 weights with group scales, 8-bit weights
#: with one scale per row; DualScale, output segments and tails.
GEMV_CASES = {
    "gemv_int8_dual_out_segments": dict(m=1, n=96, k=256, fmt="int8", dual=True, sa=3),
    "gemv_fp8_tails": dict(m=3, n=40, k=200, fmt="fp8"),
    "gemv_int8_lowrank": dict(m=2, n=64, k=384, fmt="int8", rank=8),
    "gemv_int8_dual_k_tail": dict(m=1, n=40, k=300, fmt="int8", dual=True),  # dp4a words, a partial last step
    "gemv_int8_k_not_words": dict(m=2, n=24, k=202, fmt="int8", dual=True),  # K % 4 != 0: the per-byte loop
    "gemv_fp8_dual": dict(m=2, n=48, k=320, fmt="fp8", dual=True),
    "gemv_w4a8_dual": dict(m=2, n=64, k=256, fmt="int8", dual=True, w4=True),
    "gemv_w4a8_g64_lowrank": dict(m=1, n=80, k=384, fmt="int8", segments=(64,) * 6, w4=True, rank=32),
    "gemv_w4a8_channel_tail": dict(m=3, n=16, k=600, fmt="int8", w4=True),
    "gemv_w4a8_out_segments": dict(m=2, n=96, k=256, fmt="int8", sa=3, w4=True),
    "gemv_w4a16_uneven_groups": dict(m=1, n=24, k=480, fmt="int8", segments=(96, 384), w4=True, a16=True),
}
#: The persistent TMA kernel (8-bit, one input scale along K): tails in M, N and K (zeros from the descriptors); its
#: configs with TMA stores (``tile``: the config used, ``(BM, BN, BK, STORE_TMA)``; 1: the whole tile, 2: its halves
#: along N, the right one here partly and wholly past N), which the TMA unit clips at M and N, and which an output
#: with rows of no 16-byte multiple (N = 62) and a low-rank branch leave out.
TMA_CASES = {
    "tma_int8_tails": dict(m=130, n=72, k=80, fmt="int8"),
    "tma_fp8_lowrank": dict(m=136, n=48, k=160, fmt="fp8", rank=8),
    "tma_int8_k_below_one_tile": dict(m=130, n=40, k=32, fmt="int8"),  # the demo UNet's narrowest layers
    "tma_int8_four_columns": dict(m=140, n=4, k=128, fmt="int8"),  # the demo MMDiT's output layer
    "tma_store_int8_tails": dict(m=130, n=72, k=80, fmt="int8", tile=(128, 256, 128, 1)),
    "tma_store_halves_int8_tails": dict(m=130, n=200, k=80, fmt="int8", tile=(128, 256, 128, 2)),
    "tma_store_halves_fp8_beyond_n": dict(m=136, n=48, k=160, fmt="fp8", tile=(256, 128, 128, 2)),
    "tma_fp8_lowrank_pointer_epilogue": dict(m=136, n=48, k=160, fmt="fp8", rank=8, tile=(256, 128, 128, 2)),
    "tma_store_int8_unaligned_rows": dict(m=130, n=62, k=80, fmt="int8", tile=(128, 256, 128, 1)),
    "tma_int8_cat_block_in_place": dict(m=130, n=72, k=640, fmt="int8", segments=(128, 512), block=(128, 640)),
}
#: The same kernel with its last partial wave split along K (``split_tail``; the interpreter runs 4 programs, the
#: first config's tiles are 128 x 256 x 128): 9 tiles = 2 whole waves + 1 tile in 2 pieces of 2 and 3 K tiles; 2 tiles
#: (fewer than the programs) in 2 pieces each, with bias and the low-rank branch in the last piece's epilogue; 64 x 128
#: tiles (``tile``: the config used instead of the first), 6 tiles = 1 whole wave + 2 tiles in 2 pieces each; the whole
#: waves stored by TMA and the pieces' fix-up through pointers.
TMA_SPLIT_CASES = {
    "tma_split_int8_waves_and_tail": dict(m=300, n=520, k=640, fmt="int8"),
    "tma_split_store_int8_waves_and_tail": dict(m=300, n=520, k=640, fmt="int8", tile=(128, 256, 128, 2)),
    "tma_split_fp8_lowrank_no_whole_wave": dict(m=200, n=200, k=400, fmt="fp8", rank=8),
    "tma_split_int8_64_row_tiles": dict(m=150, n=130, k=512, fmt="int8", tile=(64, 128, 128)),
}
#: The same kernel with its last partial wave in halves along N (``split_tail`` ``HALVES_N``): 9 tiles of 128 x 256 =
#: 2 whole waves + 1 tile (columns 512-767) in 2 halves, the second partly past N = 700 (with the whole waves stored by
#: TMA: wholly past N = 520); 2 tiles (no whole wave) in 4 halves, FP8 with bias and the low-rank branch; 64 x 128
#: tiles: 1 whole wave + 2 tiles (columns 128-255) in 4 halves of 64 x 64, the second ones partly past N = 250.
TMA_HALVES_CASES = {
    "tma_halves_int8_waves_and_tail": dict(m=300, n=700, k=640, fmt="int8"),
    "tma_halves_store_int8_waves_and_tail": dict(m=300, n=520, k=640, fmt="int8", tile=(128, 256, 128, 2)),
    "tma_halves_fp8_lowrank_no_whole_wave": dict(m=200, n=200, k=400, fmt="fp8", rank=8),
    "tma_halves_int8_64_row_tiles": dict(m=150, n=250, k=512, fmt="int8", tile=(64, 128, 128)),
}
#: The one-pass dequantization of packed INT4 weights (float32 / fp16 output).
DEQUANTIZE_CASES = {"dequantize_g64": dict(n=40, k=384, segments=(64,) * 6),
                    "dequantize_uneven_tail": dict(n=33, k=200, segments=(96, 104)),
                    "expand_two_level_int8": dict(n=40, k=384, segments=(64,) * 6, steps=True)}
PERSISTENT_CASES = {**TMA_CASES, **TMA_SPLIT_CASES, **TMA_HALVES_CASES}
ALL_CASES = {**CASES, **GEMV_CASES, **PERSISTENT_CASES, **DEQUANTIZE_CASES}


def exact_integer_case(name: str) -> bool:
    """INT8 codes times INT8 weights: the kernel must equal the twin bitwise (exact sums, the same float32
    epilogue; ``gemm_reference.code_scaled_gemm``); not with a low-rank branch, whose float32 product is summed
    in another order."""
    return exact_integer_spec(ALL_CASES[name])


def exact_integer_spec(spec: dict) -> bool:
    """:func:`exact_integer_case` for the arguments ``spec`` of :func:`case`."""
    return spec.get("fmt") == "int8" and not spec.get("w4") and not spec.get("a16") and not spec.get("rank")


def k_block(args: tuple, start: int, end: int) -> tuple:
    """The op arguments of one constant-scale K block of a split layer (``gemm_reference.blockwise_gemm``): K-slices
    of the input and weight (views: the kernels must read them in place), the block's scale column named by
    ``a_col[start]`` / ``w_col[start]``, ``scale_mode`` 0."""
    a, b, a_scale, _, w_scale, a_col, w_col, bias, t, u, out_segment, _, _, out_dtype = args
    return (a[:, :, start:end], b[:, start:end], a_scale, None, w_scale, a_col[start:end], w_col[start:end], bias, t,
            u, out_segment, 0, 0, out_dtype)


def one_input_scale(args: tuple) -> tuple:
    """The op arguments of :func:`case` with one input scale along K (column 0): the weight's group scales
    still vary; what the GEMV and the dequantized-weight path take."""
    a, b, a_scale, a_scale_neg, w_scale, a_col, *rest = args
    neg = a_scale_neg[..., :1].contiguous() if a_scale_neg is not None else None
    return (a, b, a_scale[..., :1].contiguous(), neg, w_scale, torch.zeros_like(a_col), *rest)


def persistent_args(spec: dict) -> tuple:
    """The op arguments of a persistent-kernel case ``spec`` (without its ``tile``): one input scale along K, or a
    split layer's block with its own scale column."""
    args = case(**spec)
    return args if "block" in spec else one_input_scale(args)


def dequantize_case(n, k, segments, steps=False, seed=0):
    """Packed codes, group scales (``steps``: two-level uint8 steps 1..16) and scale columns (CPU tensors)."""
    g = torch.Generator().manual_seed(seed)
    cols = torch.arange(len(segments)).repeat_interleave(torch.tensor(segments)).int()
    codes = torch.randint(-8, 8, (n, k), generator=g, dtype=torch.int8)
    if steps:
        return pack_int4(codes), torch.randint(1, 17, (n, len(segments)), generator=g, dtype=torch.uint8), cols
    return pack_int4(codes), torch.rand(n, len(segments), generator=g) * 0.01 + 1e-3, cols


@contextlib.contextmanager
def first_tma_config(tile: tuple | None):
    """The persistent kernel's configs with the one of tiles ``(BM, BN, BK)`` (and ``STORE_TMA``, if given) first
    (autotuning is off here, so the first legal config runs); ``None``: as they are."""
    from segquant.kernels.gpu.triton_tma import _tma_gemm_kernel

    configs = list(_tma_gemm_kernel.configs)
    _tma_gemm_kernel.cache.clear()  # a config chosen before for the same key would be taken again
    if tile is not None:
        names = ("BM", "BN", "BK", "STORE_TMA")[:len(tile)]
        _tma_gemm_kernel.configs = sorted(configs, key=lambda c: tuple(c.kwargs[k] for k in names) != tuple(tile))
    try:
        yield
    finally:
        _tma_gemm_kernel.configs = configs


def tail_split_of(name: str) -> int:
    """The persistent kernel's ``split_tail`` for a case of :data:`PERSISTENT_CASES`."""
    from segquant.kernels.gpu.triton_tma import HALVES_N, SPLIT_K, WHOLE_TILES

    return SPLIT_K if name in TMA_SPLIT_CASES else HALVES_N if name in TMA_HALVES_CASES else WHOLE_TILES


def run(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(kernel output, reference) of case ``name``."""
    from segquant.kernels.gpu.ops import dequantize_w4
    from segquant.kernels.gpu.triton_tma import tail_splits
    from segquant.kernels.gpu.triton_w4 import dequantize_w4_triton

    if name in DEQUANTIZE_CASES:
        b, scale, cols = dequantize_case(**DEQUANTIZE_CASES[name])
        dtype = torch.int8 if scale.dtype == torch.uint8 else torch.float32
        return (dequantize_w4_triton(b, scale, cols, dtype).float(), dequantize_w4(b, scale, cols, dtype).float())
    spec = dict(ALL_CASES[name])
    tile = spec.pop("tile", None)
    kernel = "persistent" if name in PERSISTENT_CASES else "gemv" if name in GEMV_CASES else "tiled"
    args = kernel_args(kernel, spec)
    split = tail_split_of(name)
    assert not split or tail_splits(args[0], args[1], split), f"{name}: no tile config splits its last wave"
    return launch(kernel, args, tile, split), scaled_gemm_reference(*args)


def kernel_args(kernel: str, spec: dict) -> tuple:
    """The op arguments of :func:`case` ``spec`` for ``kernel`` (``persistent``, ``gemv``: one input scale along K;
    ``tiled``)."""
    if kernel == "persistent":
        return persistent_args(spec)
    args = case(**spec)
    return one_input_scale(args) if kernel == "gemv" else args


def launch(kernel: str, args: tuple, tile: tuple | None = None, split_tail: int = 0) -> torch.Tensor:
    """``kernel`` on the op arguments ``args``: the persistent kernel (in the config of tiles ``tile`` if it fits, see
    :func:`first_tma_config`, with ``split_tail``, 0: whole tiles), the GEMV or the tiled kernel."""
    from segquant.kernels.gpu.triton_gemm import scaled_gemm_triton
    from segquant.kernels.gpu.triton_gemv import gemv_triton
    from segquant.kernels.gpu.triton_tma import tma_gemm_triton

    if kernel == "persistent":
        a, b, a_scale, _, w_scale, a_col, w_col, bias, t, u, *_, out_dtype = args
        with first_tma_config(tile):
            return tma_gemm_triton(a, b, a_scale, w_scale, a_col, w_col, bias, t, u, out_dtype, split_tail=split_tail)
    if kernel == "gemv":
        a, b, a_scale, a_scale_neg, w_scale, _, w_col, bias, t, u, out_segment, _, k_align, out_dtype = args
        return gemv_triton(a, b, a_scale, a_scale_neg, w_scale, w_col, bias, t, u, out_segment, k_align, out_dtype)
    return scaled_gemm_triton(*args)


def config_that_ran() -> dict:
    """The persistent kernel's config of its last launch (``BM``, ``BN``, ``BK``, ``STORE_TMA``, ...)."""
    from segquant.kernels.gpu.triton_tma import _tma_gemm_kernel

    return _tma_gemm_kernel.best_config.kwargs

def prepare_interpreter() -> None:
    """One config per launch (nothing to time) and a fix for NumPy >= 2.4, which refuses the interpreter's
    ``int(array_of_one)`` conversion of scalar arguments."""
    assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1"
    os.environ["SEGQUANT_TRITON_AUTOTUNE"] = "0"
    import triton.runtime.autotuner as autotuner
    import triton.runtime.interpreter as interpreter

    autotuner.Autotuner.do_bench = property(lambda self: (lambda fn, quantiles=None: [1.0, 1.0, 1.0]))
    original = interpreter._patch_lang_tensor

    def patch_index(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    interpreter._patch_lang_tensor = patch_index


def stored_by_tma(name: str) -> str:
    """For a persistent-kernel case: the ``STORE_TMA`` of the config that ran (``"0"``: pointer stores); ``"-"`` for the
    others."""
    return str(config_that_ran()["STORE_TMA"]) if name in PERSISTENT_CASES else "-"


def ops_candidates(name: str) -> dict[str, tuple[int, bool]]:
    """For a case of :data:`PERSISTENT_CASES`: each GEMM kernel that ``ops.gemm_kernels`` offers, with the
    ``split_tail`` it passed to the persistent kernel (-1: it did not call it) and whether its output equals the
    twin's bits."""
    from unittest import mock

    from segquant.kernels.gpu import ops, triton_tma

    spec = dict(PERSISTENT_CASES[name])
    spec.pop("tile", None)
    args = persistent_args(spec)
    reference = scaled_gemm_reference(*args)
    launch, splits = triton_tma.tma_gemm_triton, []
    with mock.patch.object(triton_tma, "tma_gemm_triton",
                           lambda *a, **kw: splits.append(kw["split_tail"]) or launch(*a, **kw)):
        offered = {}
        for kernel, call in ops.gemm_kernels(*args).items():
            splits.clear()
            out = call()
            offered[kernel] = (splits[0] if splits else -1, torch.equal(out, reference))
    return offered


#: Programs a swept persistent launch takes in place of one per SM (``triton_tma.INTERPRETER_SMS``): each count
#: leaves other last waves to split.
SWEEP_PROGRAMS = (3, 4, 5, 7, 9, 13)
#: Keys of a swept spec that say how to launch, not what :func:`case` builds.
LAUNCH_KEYS = ("kernel", "programs", "tile", "split_tail", "config")


def sweep_spec(rng: random.Random) -> dict:
    """Random arguments of :func:`case` inside what the GPU backend sends the kernels, plus ``kernel``:

    - ``persistent``: 8-bit, one input scale along K, at least ``TMA_MIN_M`` rows, K a multiple of 16; with
      ``programs`` (:data:`SWEEP_PROGRAMS`), the config of ``tile`` tried first and a ``split_tail`` mode;
    - ``gemv`` (up to 4 rows; 8-bit weights with one scale per row) or ``tiled`` (any M): input segments on
      multiples of ``MIN_TILE_K`` channels (:func:`sweep_segments`), output segments of multiples of ``MIN_TILE_N``
      rows (what ``backend._layout_problem`` allows), DualScale, packed INT4 weights, 16-bit inputs.

    Any of them with a low-rank branch."""
    from segquant.kernels.gpu.backend import MIN_TILE_K, MIN_TILE_N
    from segquant.kernels.gpu.triton_tma import _CONFIGS, HALVES_N, SPLIT_K, TMA_MIN_M, WHOLE_TILES

    rank = rng.choice([0, 0, 5, 8, 16])
    kernel = rng.choice(["persistent", "tiled", "gemv"])
    if kernel == "persistent":
        config = rng.choice(_CONFIGS).kwargs
        return dict(kernel=kernel, m=rng.randint(TMA_MIN_M, 520), n=rng.randint(1, 600), k=16 * rng.randint(1, 48),
                    fmt=rng.choice(["int8", "fp8"]), rank=rank, programs=rng.choice(SWEEP_PROGRAMS),
                    tile=tuple(config[key] for key in ("BM", "BN", "BK", "STORE_TMA")),
                    split_tail=rng.choice([WHOLE_TILES, SPLIT_K, HALVES_N]))
    w4 = rng.random() < 0.35
    a16 = w4 and rng.random() < 0.4
    k = MIN_TILE_K * rng.randint(1, 24)
    sa = 1 if a16 else rng.choice([1, 1, 2, 3])
    return dict(kernel=kernel, m=rng.randint(1, 4) if kernel == "gemv" else rng.randint(1, 200),
                n=sa * MIN_TILE_N * rng.randint(1, 6) if sa > 1 else rng.randint(1, 300), k=k,
                fmt="int8" if w4 else rng.choice(["int8", "fp8"]),
                segments=() if kernel == "gemv" and not w4 else sweep_segments(rng, k, groups_only=w4),
                dual=not a16 and rng.random() < 0.3, sa=sa, w4=w4, a16=a16, rank=rank)


def sweep_segments(rng: random.Random, k: int, groups_only: bool) -> tuple:
    """Input segments of ``k`` channels (a multiple of ``MIN_TILE_K``): none (one scale along K), equal groups
    (attention heads, INT4 weight groups) or, unless ``groups_only``, a ``cat`` of two unequal parts."""
    from segquant.kernels.gpu.backend import MIN_TILE_K

    draw = rng.random()
    if draw < 0.4:
        return ()
    if draw < 0.7 or groups_only or k == MIN_TILE_K:
        size = rng.choice([g for g in (MIN_TILE_K, 2 * MIN_TILE_K, 4 * MIN_TILE_K) if k % g == 0])
        return (size,) * (k // size)
    cut = MIN_TILE_K * rng.randint(1, k // MIN_TILE_K - 1)
    return (cut, k - cut)


@contextlib.contextmanager
def interpreter_programs(count: int):
    """The persistent kernel's grid in the interpreter set to ``count`` programs for a block."""
    from segquant.kernels.gpu import triton_tma

    saved, triton_tma.INTERPRETER_SMS = triton_tma.INTERPRETER_SMS, count
    try:
        yield
    finally:
        triton_tma.INTERPRETER_SMS = saved


def run_swept(spec: dict, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(kernel output, reference) of a :func:`sweep_spec`; a ``split_tail`` that no config applies to the shape
    becomes ``WHOLE_TILES`` in ``spec``, and ``config`` records the persistent kernel's tiles that ran."""
    from segquant.kernels.gpu.triton_tma import WHOLE_TILES, tail_splits

    kernel = spec["kernel"]
    args = kernel_args(kernel, {key: value for key, value in spec.items() if key not in LAUNCH_KEYS} | {"seed": seed})
    if kernel != "persistent":
        return launch(kernel, args), scaled_gemm_reference(*args)
    with interpreter_programs(spec["programs"]):
        if spec["split_tail"] and not tail_splits(args[0], args[1], spec["split_tail"]):
            spec["split_tail"] = WHOLE_TILES
        out = launch(kernel, args, spec["tile"], spec["split_tail"])
    spec["config"] = [config_that_ran()[key] for key in ("BM", "BN", "BK", "STORE_TMA")]
    return out, scaled_gemm_reference(*args)


def sweep(count: int, seed: int) -> None:
    """Prints ``sweep_<i> rel_err equal exact spec`` (``exact``: INT8 x INT8, bitwise by contract, see
    :func:`exact_integer_spec`; ``spec``: JSON) for ``count`` random specs drawn from ``seed``."""
    rng = random.Random(seed)
    for i in range(count):
        spec = sweep_spec(rng)
        y, ref = run_swept(spec, seed=i)
        print(f"sweep_{i}", f"{float((y - ref).norm() / ref.norm()):.3e}", torch.equal(y, ref),
              exact_integer_spec(spec), json.dumps(spec, separators=(",", ":")), flush=True)


if __name__ == "__main__":
    prepare_interpreter()
    if sys.argv[1:2] == ["--ops"]:  # the kernels ops offers for these cases: name, then a JSON object
        for name in sys.argv[2:]:
            print(name, json.dumps(ops_candidates(name)), flush=True)
        sys.exit(0)
    if sys.argv[1:2] == ["--sweep"]:  # --sweep COUNT SEED: random shapes within the backend's contract
        sweep(int(sys.argv[2]), int(sys.argv[3]))
        sys.exit(0)
    for name in sys.argv[1:] or list(ALL_CASES):
        y, ref = run(name)
        print(name, f"{float((y - ref).norm() / ref.norm()):.3e}", torch.equal(y, ref), stored_by_tma(name),
              flush=True)
