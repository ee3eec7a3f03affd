"""Persistent TMA GEMM for the compute-bound 8-bit layers on Hopper: INT8 x INT8 (int32) or FP8 E4M3 x E4M3
(float32, promoted every K tile as in :mod:`.triton_gemm`), one input, scales constant along K.

The tiled kernel of :mod:`.triton_gemm` loads its tiles through pointers (``cp.async``) and launches one
program per output tile. Here each of ``NUM_SMS`` programs walks its share of the output tiles (grouped
as in :func:`.triton_gemm.tile_position`), the A and B tiles arrive by the Tensor Memory Accelerator
(host-built descriptors; out-of-range rows and the K tail read as zeros, so no masks in the mainloop) and the
compiler pipelines the K loop across tile boundaries (``flatten``). Epilogue: ``acc · a_scale[m] ·
w_scale[n]``, bias and low-rank branch (:func:`.triton_gemm.epilogue_terms`), then the store (``STORE_TMA``):
0, masked pointer stores from the registers; where the output's rows are 16-byte multiples also 1, one TMA store of
the tile through shared memory, or 2, one per half of the tile along N, whose half-size staging buffer leaves room
for a fourth stage of the K loop at 128 x 256 and 256 x 128. The autotuner times them all.

``SPLIT_TAIL`` (:data:`SPLIT_K`): the last, partial wave of tiles (``tiles % NUM_SMS`` of them; FLUX's 3072 -> 3072
layer at 4608 rows: 432 tiles of 128 x 256 on 132 SMs, a last wave 27 % full) is split along K over the programs that
would idle (:func:`tail_parts` pieces per tile, each an equal share of the K tiles; 3 on that layer), a
stream-K-like balance without its fractional tiles. Each piece stores its exact partial sum (int32, or float32
for FP8) to a workspace and counts itself in on its tile's counter; the piece that arrives last adds the
partials in piece order (so the FP8 sum does not depend on who arrives last; the routing offers the split to INT8
only, as FP8's float32 partials round otherwise than one promoted chain) and runs the epilogue. No program
waits for another. The counters are zeroed per call and reset to 0 by the last piece too, so that the
autotuner's repeated launches on the same arguments stay correct. :data:`HALVES_N` splits each tile of that wave
into its two halves along N instead, each with the whole K (where twice the last wave's tiles fit the programs), so
there are no partial sums: a half tile takes half the MMAs, and its epilogue stores through pointers.

Same arguments and math as the op (:mod:`segquant.kernels.gemm_reference`), restricted by :func:`tma_fits`.
``SEGQUANT_TRITON_AUTOTUNE=0`` in the environment skips autotuning (first config; for tests).
"""

from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from segquant.kernels.gpu.bound_launch import launch
from segquant.kernels.gpu.triton_gemm import (_dot, epilogue_terms, graph_timed, k_contiguous, lowrank_args,
                                              rounds_as_twin, row_tile_fits, scale_strides, store_tile, tile_position,
                                              tuned_or_first)

#: Rows from which an 8-bit layer is compute-bound enough for the persistent kernel.
TMA_MIN_M = 128
#: Programs the interpreter (CPU tensors) launches in place of one per SM.
INTERPRETER_SMS = 4


def _block_shapes(nargs: dict) -> None:
    """Config pre-hook: the descriptors' block shapes are the config's tiles (the weight's also its half along N, for
    :data:`HALVES_N`; the output's: half of one with ``STORE_TMA`` 2)."""
    nargs["a_desc"].block_shape = [nargs["BM"], nargs["BK"]]
    nargs["b_desc"].block_shape = [nargs["BN"], nargs["BK"]]
    nargs["bh_desc"].block_shape = [nargs["BN"] // 2, nargs["BK"]]
    if nargs["c_desc"] is not None:
        nargs["c_desc"].block_shape = store_block(nargs["BM"], nargs["BN"], nargs["STORE_TMA"])


def store_block(bm: int, bn: int, store_tma: int) -> list[int]:
    """The block one TMA store writes: the ``(BM, BN)`` tile, or its half along N with ``STORE_TMA`` 2."""
    return [bm, bn // 2 if store_tma == 2 else bn]


# (BM, BN, BK, warps, stages). Triton keeps a wgmma with an int32 accumulator synchronous ("the accumulator is not
# fp32": a wait for the tensor cores after every K step, where FP8 / fp16 dots keep one step in flight), so the
# 256-deep K tiles, which halve those waits, compete too (their 3 / 2 stages fill 224 of the 227 KB of shared memory).
# The largest tiles also with 4 stages (192 KB beside the epilogue's staging tile, about 32 KB for the pointer stores
# at 128 x 256 and for a TMA-stored half: 224-225 of the 227 KB = 232448 bytes) and with the TMA stores.
_CONFIGS = [triton.Config({"BM": bm, "BN": bn, "BK": bk, "GROUP_M": 8, "STORE_TMA": store}, num_warps=w,
                          num_stages=st, pre_hook=_block_shapes)
            for bm, bn, bk, w, st, store in [
                (128, 256, 128, 8, 3, 0), (256, 128, 128, 8, 3, 0), (128, 128, 128, 8, 4, 0), (128, 256, 64, 8, 4, 0),
                (128, 128, 64, 4, 5, 0), (64, 128, 128, 4, 4, 0), (64, 256, 128, 8, 3, 0), (128, 256, 256, 8, 2, 0),
                (128, 128, 256, 8, 3, 0), (128, 256, 128, 8, 4, 0), (128, 256, 128, 8, 3, 1), (128, 256, 128, 8, 4, 2),
                (256, 128, 128, 8, 4, 2)]]
#: ``SPLIT_TAIL`` values: the last partial wave as whole tiles, split along K, or in halves along N (module doc).
WHOLE_TILES, SPLIT_K, HALVES_N = 0, 1, 2
#: Rows of a split tile that its fix-up adds and finishes at a time.
FIXUP_ROWS: tl.constexpr = tl.constexpr(32)
#: Elements of the largest output tile: one workspace slot per tail piece.
_MAX_TILE = max(c.kwargs["BM"] * c.kwargs["BN"] for c in _CONFIGS)


def tail_parts(tiles: int, programs: int, k_tiles: int, split_tail: int = SPLIT_K) -> int:
    """Pieces each tile of the last, partial wave is split into (1: not split). :data:`SPLIT_K`: as many as the idle
    programs allow, at most ``√k_tiles``, and only where that makes at least 2. The bound balances a piece's
    share of the K loop (``∝ k_tiles / parts``) against the last piece's reads of the others' partial tiles
    (``∝ parts``; one partial tile takes about as long to read as one K tile to multiply). :data:`HALVES_N`: 2 where
    twice the wave's tiles fit the programs. The kernel computes the same."""
    tail = tiles % programs
    if split_tail == HALVES_N:
        return 2 if 0 < 2 * tail <= programs else 1
    parts = min(programs // tail, math.isqrt(k_tiles)) if tail else 1
    return parts if parts >= 2 else 1


def sized_configs(configs, named_args, **kwargs):
    """The configs whose row tiles suit M (64-row tiles only up to :data:`.triton_gemm.MID_M`), those with TMA
    stores (``STORE_TMA`` 1, 2) only where the launch made an output descriptor and there is no low-rank branch (its
    factors' tiles beside the staging tile and the K ring overflow Hopper's shared memory: 241,696 of 232,448 bytes
    on the H100 at rank 16, every such config at rank 32 in the sm_90 builds); with ``SPLIT_TAIL`` only those whose
    last wave is split (the others run as without it)."""
    args = {**named_args, **kwargs}
    stores_by_tma = args.get("c_desc") is not None and not args.get("HAS_LR")
    kept = [c for c in configs if row_tile_fits(c.kwargs["BM"], args["M"])
            and (stores_by_tma or not c.kwargs.get("STORE_TMA"))]
    if args.get("SPLIT_TAIL"):
        kept = [c for c in kept if _splits(c, args["M"], args["N"], args["K"], args["NUM_SMS"], args["SPLIT_TAIL"])]
    return tuned_or_first(kept)


def _splits(config: triton.Config, m: int, n: int, k: int, programs: int, split_tail: int) -> bool:
    """Whether ``config``'s tiles leave a last wave that :func:`tail_parts` splits."""
    bm, bn, bk = config.kwargs["BM"], config.kwargs["BN"], config.kwargs["BK"]
    return tail_parts(triton.cdiv(m, bm) * triton.cdiv(n, bn), programs, triton.cdiv(k, bk), split_tail) > 1


@triton.jit
def _scaled_tile(acc, m0, n0, M, N, c_ptr, c_desc, as_ptr, ws_ptr, a_col, w_col, bias_ptr, t_ptr, u_ptr, RANK,
                 stride_cm, stride_sm, stride_wn, stride_tm, stride_un, HAS_BIAS: tl.constexpr, HAS_LR: tl.constexpr,
                 R: tl.constexpr, STORE_TMA: tl.constexpr):
    """The epilogue of the output block at row ``m0``, column ``n0`` of ``acc``'s shape: ``acc · a_scale[m] ·
    w_scale[n]``, bias and low-rank branch (:func:`.triton_gemm.epilogue_terms`), then the store: masked through
    ``c_ptr`` (``STORE_TMA`` 0), or through ``c_desc`` as one block (1) or its two halves along N (2), rows and
    columns past ``M`` / ``N`` clipped by the TMA unit."""
    offs_m, offs_n = m0 + tl.arange(0, acc.shape[0]), n0 + tl.arange(0, acc.shape[1])
    rm, rn = tl.where(offs_m < M, offs_m, 0), tl.where(offs_n < N, offs_n, 0)
    out = acc.to(tl.float32) * tl.load(as_ptr + rm * stride_sm + a_col)[:, None]
    out = out * tl.load(ws_ptr + rn * stride_wn + w_col)[None, :]
    out = epilogue_terms(out, rm, rn, bias_ptr, t_ptr, u_ptr, stride_tm, stride_un, RANK, HAS_BIAS, HAS_LR, R)
    if STORE_TMA == 2:
        left, right = tl.split(tl.permute(tl.reshape(out, (out.shape[0], 2, out.shape[1] // 2)), (0, 2, 1)))
        c_desc.store([m0, n0], left.to(c_ptr.dtype.element_ty))
        c_desc.store([m0, n0 + out.shape[1] // 2], right.to(c_ptr.dtype.element_ty))
    elif STORE_TMA:
        c_desc.store([m0, n0], out.to(c_ptr.dtype.element_ty))
    else:
        store_tile(out, offs_m, offs_n, M, N, c_ptr, stride_cm)


@triton.jit
def _add_partials(first_ptr, parts, pid_m, pid_n, M, N, c_ptr, as_ptr, ws_ptr, a_col, w_col, bias_ptr, t_ptr, u_ptr,
                  RANK, stride_cm, stride_sm, stride_wn, stride_tm, stride_un, IS_INT: tl.constexpr,
                  HAS_BIAS: tl.constexpr, HAS_LR: tl.constexpr, R: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr):
    """The split tile's fix-up: the ``parts`` partial tiles from ``first_ptr`` on added in piece order and finished,
    ``FIXUP_ROWS`` rows at a time (a whole 128 x 256 tile and one partial would not fit the registers)."""
    for r0 in tl.static_range(0, BM, FIXUP_ROWS):
        rows = r0 + tl.arange(0, FIXUP_ROWS)
        slot = rows[:, None] * BN + tl.arange(0, BN)[None, :]
        total = tl.zeros((FIXUP_ROWS, BN), tl.int32 if IS_INT else tl.float32)
        for p in range(0, parts):
            total += tl.load(first_ptr + p * BM * BN + slot, cache_modifier=".cg")
        _scaled_tile(total, pid_m * BM + r0, pid_n * BN, M, N, c_ptr, None, as_ptr, ws_ptr, a_col, w_col, bias_ptr,
                     t_ptr, u_ptr, RANK, stride_cm, stride_sm, stride_wn, stride_tm, stride_un, HAS_BIAS, HAS_LR, R, 0)


@triton.jit
def _half_tile(a_desc, bh_desc, tail, whole_tiles, num_m, num_n, M, N, K, c_ptr, as_ptr, ws_ptr, a_col, w_col,
               bias_ptr, t_ptr, u_ptr, RANK, stride_cm, stride_sm, stride_wn, stride_tm, stride_un,
               IS_INT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_LR: tl.constexpr, R: tl.constexpr, BM: tl.constexpr,
               BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr):
    """:data:`HALVES_N`: program ``p < 2 · tail`` computes half ``p % 2`` along N of the last wave's tile
    ``whole_tiles + p // 2``, the whole K, and finishes it (pointer stores)."""
    piece = tl.program_id(0)
    if piece < 2 * tail:
        pid_m, pid_n = tile_position(whole_tiles + piece // 2, num_m, num_n, GROUP_M)
        n0 = pid_n * BN + (piece % 2) * (BN // 2)
        acc = tl.zeros((BM, BN // 2), tl.int32 if IS_INT else tl.float32)
        for k0 in range(0, K, BK):
            a = a_desc.load([pid_m * BM, k0])
            b = bh_desc.load([n0, k0])
            acc = _dot(a, b.T, acc, IS_INT, BK)
        _scaled_tile(acc, pid_m * BM, n0, M, N, c_ptr, None, as_ptr, ws_ptr, a_col, w_col, bias_ptr, t_ptr, u_ptr,
                     RANK, stride_cm, stride_sm, stride_wn, stride_tm, stride_un, HAS_BIAS, HAS_LR, R, 0)


@triton.autotune(configs=_CONFIGS, key=["M_BUCKET", "N", "K", "IS_INT", "HAS_LR", "SPLIT_TAIL"],
                 prune_configs_by={"early_config_prune": sized_configs}, do_bench=graph_timed)
@triton.jit
def _tma_gemm_kernel(a_desc, b_desc, bh_desc, c_ptr, c_desc, as_ptr, ws_ptr, acol_ptr, wcol_ptr, bias_ptr, t_ptr, u_ptr,
                     partial_ptr, count_ptr, M, N, K, M_BUCKET, RANK, stride_cm, stride_sm, stride_wn, stride_tm,
                     stride_un, NUM_SMS: tl.constexpr, IS_INT: tl.constexpr, HAS_BIAS: tl.constexpr,
                     HAS_LR: tl.constexpr, R: tl.constexpr, SPLIT_TAIL: tl.constexpr, BM: tl.constexpr,
                     BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr, STORE_TMA: tl.constexpr):
    num_m, num_n, k_tiles = tl.cdiv(M, BM), tl.cdiv(N, BN), tl.cdiv(K, BK)
    tiles = num_m * num_n
    a_col, w_col = tl.load(acol_ptr), tl.load(wcol_ptr)
    whole_tiles, parts, tail = tiles, 1, tiles % NUM_SMS
    if SPLIT_TAIL == 1:  # SPLIT_K, as tail_parts()
        parts = tl.minimum(NUM_SMS // tl.maximum(tail, 1), tl.sqrt_rn(k_tiles.to(tl.float32)).to(tl.int32))
        parts = tl.where((tail > 0) & (parts >= 2), parts, 1)
    elif SPLIT_TAIL == 2:  # HALVES_N
        parts = tl.where((tail > 0) & (2 * tail <= NUM_SMS), 2, 1)
    whole_tiles = tiles - tl.where(parts > 1, tail, 0)
    # The epilogue counts its tiles itself: the flattened loop's pipeliner splits the loop into prologue and
    # epilogue, and a value used in both is what it handles badly (as in Triton's persistent-matmul tutorial).
    done = tl.program_id(0) - NUM_SMS
    for tile in tl.range(tl.program_id(0), whole_tiles, NUM_SMS, flatten=True):
        pid_m, pid_n = tile_position(tile, num_m, num_n, GROUP_M)
        acc = tl.zeros((BM, BN), tl.int32 if IS_INT else tl.float32)
        for k0 in range(0, K, BK):
            a = a_desc.load([pid_m * BM, k0])
            b = b_desc.load([pid_n * BN, k0])
            acc = _dot(a, b.T, acc, IS_INT, BK)
        done += NUM_SMS
        pid_m, pid_n = tile_position(done, num_m, num_n, GROUP_M)
        _scaled_tile(acc, pid_m * BM, pid_n * BN, M, N, c_ptr, c_desc, as_ptr, ws_ptr, a_col, w_col, bias_ptr,
                     t_ptr, u_ptr, RANK, stride_cm, stride_sm, stride_wn, stride_tm, stride_un, HAS_BIAS, HAS_LR, R,
                     STORE_TMA)
    if SPLIT_TAIL == 2:  # HALVES_N
        _half_tile(a_desc, bh_desc, tiles - whole_tiles, whole_tiles, num_m, num_n, M, N, K, c_ptr, as_ptr, ws_ptr,
                   a_col, w_col, bias_ptr, t_ptr, u_ptr, RANK, stride_cm, stride_sm, stride_wn, stride_tm, stride_un,
                   IS_INT, HAS_BIAS, HAS_LR, R, BM, BN, BK, GROUP_M)
    elif SPLIT_TAIL:  # SPLIT_K
        piece = tl.program_id(0)
        if piece < (tiles - whole_tiles) * parts:
            tile, part = whole_tiles + piece // parts, piece % parts
            pid_m, pid_n = tile_position(tile, num_m, num_n, GROUP_M)
            acc = tl.zeros((BM, BN), tl.int32 if IS_INT else tl.float32)
            for kt in range(part * k_tiles // parts, (part + 1) * k_tiles // parts):
                a = a_desc.load([pid_m * BM, kt * BK])
                b = b_desc.load([pid_n * BN, kt * BK])
                acc = _dot(a, b.T, acc, IS_INT, BK)
            slot = tl.arange(0, BM)[:, None] * BN + tl.arange(0, BN)[None, :]
            tl.store(partial_ptr + piece * BM * BN + slot, acc)
            tl.debug_barrier()  # every thread's partial is written before the count is published
            arrived = tl.atomic_add(count_ptr + tile - whole_tiles, 1, sem="acq_rel", scope="gpu")
            if arrived == parts - 1:
                tl.atomic_xchg(count_ptr + tile - whole_tiles, 0, sem="relaxed", scope="gpu")  # ready for the next call
                _add_partials(partial_ptr + (piece - part) * BM * BN, parts, pid_m, pid_n, M, N, c_ptr, as_ptr,
                              ws_ptr, a_col, w_col, bias_ptr, t_ptr, u_ptr, RANK, stride_cm, stride_sm, stride_wn,
                              stride_tm, stride_un, IS_INT, HAS_BIAS, HAS_LR, R, BM, BN)


def store_descriptor(out: torch.Tensor) -> TensorDescriptor | None:
    """A TMA descriptor of the ``(M, N)`` output (block shape set per config), or None where its rows are not
    16-byte multiples (the configs with TMA stores are then left out)."""
    return TensorDescriptor.from_tensor(out, [1, 1]) if out.stride(0) * out.element_size() % 16 == 0 else None


def tma_fits(a: torch.Tensor, b: torch.Tensor, a_scale_neg, scale_mode: int, input_varies: bool) -> bool:
    """An 8-bit layer with at least ``TMA_MIN_M`` rows, one input (``Sa == 1``), no DualScale, scales constant
    along K (``scale_mode`` 0), in TMA's alignment (:func:`tma_aligned`)."""
    return (b.dtype == a.dtype and a.dtype in (torch.int8, torch.float8_e4m3fn) and a.shape[0] == 1
            and a.shape[1] >= TMA_MIN_M and a_scale_neg is None and scale_mode == 0 and not input_varies
            and tma_aligned(a, b))


def tma_aligned(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Codes ``a`` ``(1, M, K)`` and weights ``b`` ``(N, K)`` (8-bit) in rows of 16-byte multiples starting at 16-byte
    offsets, with 16-byte row strides (TMA's alignment; a K-slice of a wider tensor is read in place), on a GPU with
    TMA (sm_90+)."""
    return (a.shape[2] % 16 == 0 and a.storage_offset() % 16 == 0 and b.storage_offset() % 16 == 0
            and a.stride(1) % 16 == 0 and b.stride(0) % 16 == 0
            and (not a.is_cuda or device_properties(a.device.index or 0).major >= 9))


def tail_splits(a: torch.Tensor, b: torch.Tensor, split_tail: int = SPLIT_K) -> bool:
    """Whether some tile config of the persistent kernel splits the last wave of ``a`` ``(1, M, K)`` x ``b``
    ``(N, K)`` as ``split_tail`` says (see :func:`tail_parts`), i.e. whether it runs differently at all."""
    return _some_config_splits(a.shape[1], b.shape[0], a.shape[2], persistent_programs(a), split_tail)


@functools.cache
def _some_config_splits(m: int, n: int, k: int, programs: int, split_tail: int) -> bool:
    """:func:`tail_splits` for one shape, remembered (it is asked on every eager call of the op)."""
    return bool(sized_configs(_CONFIGS, {"M": m, "N": n, "K": k, "NUM_SMS": programs, "SPLIT_TAIL": split_tail}))


@functools.cache
def device_properties(device_index: int):
    """The CUDA device's properties (compute capability, SM count), read once per device."""
    return torch.cuda.get_device_properties(device_index)


def persistent_programs(a: torch.Tensor) -> int:
    """Programs of the persistent grid: one per SM (``INTERPRETER_SMS`` for CPU tensors)."""
    return device_properties(a.device.index or 0).multi_processor_count if a.is_cuda else INTERPRETER_SMS


def tma_gemm_triton(a, b, a_scale, w_scale, a_col, w_col, bias, lowrank_t, lowrank_up, out_dtype: torch.dtype,
                    split_tail: int = WHOLE_TILES) -> torch.Tensor:
    """``(1, M, K)`` 8-bit codes x ``(N, K)`` weights of the same format -> ``(M, N)`` (see :func:`tma_fits`);
    ``a_scale`` ``(1, M|1, J)``, ``w_scale`` ``(N, J')``, column ``a_col[0]`` / ``w_col[0]`` of each.
    ``split_tail``: the last partial wave split along K (:data:`SPLIT_K`; workspace: one float32 / int32 tile per SM,
    ≈ 17 MB on an H200, and one counter per SM) or in halves along N (:data:`HALVES_N`); see the module doc."""
    m, k, n = a.shape[1], a.shape[2], b.shape[0]
    out = torch.empty(m, n, device=a.device, dtype=out_dtype)
    a2, b = k_contiguous(a[0]), k_contiguous(b)
    ws, a_scale = w_scale.contiguous(), a_scale.contiguous()
    t, u, rank = lowrank_args(lowrank_t, lowrank_up, ws)
    sms = persistent_programs(a)
    partials, counts = ws, ws  # placeholders: without the split the kernel never touches them (no memset per call)
    if split_tail == SPLIT_K:
        partials = torch.empty(sms * _MAX_TILE, device=a.device,
                               dtype=torch.int32 if a.dtype == torch.int8 else torch.float32)
        counts = torch.zeros(sms, device=a.device, dtype=torch.int32)

    def grid(meta: dict) -> tuple[int]:
        """One program per SM (with ``split_tail`` also where the tiles are fewer: the idle ones take pieces)."""
        return (sms if split_tail else min(sms, triton.cdiv(m, meta["BM"]) * triton.cdiv(n, meta["BN"])),)

    launch(
        _tma_gemm_kernel, grid, TensorDescriptor.from_tensor(a2, [1, 1]), TensorDescriptor.from_tensor(b, [1, 1]),
        TensorDescriptor.from_tensor(b, [1, 1]), out, store_descriptor(out),
        a_scale, ws, a_col, w_col, bias if bias is not None else ws, t, u, partials, counts,
        m, n, k, triton.next_power_of_2(m), rank, out.stride(0), scale_strides(a_scale)[1], ws.stride(0),
        t.stride(0), u.stride(0),
        NUM_SMS=sms, IS_INT=a.dtype == torch.int8, HAS_BIAS=bias is not None, HAS_LR=lowrank_t is not None,
        R=max(16, triton.next_power_of_2(rank)), SPLIT_TAIL=split_tail, enable_fp_fusion=not rounds_as_twin(a, b))
    return out
