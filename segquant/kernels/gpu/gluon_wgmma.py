"""Persistent INT8 x INT8 GEMM for Hopper written in Gluon, Triton's explicit-layout dialect, so that one tensor-core
step stays in flight while the next is issued.

Why a second persistent kernel: Triton's pipeliner keeps a wgmma asynchronous only when its accumulator is float32
("the accumulator is not fp32"), so every K step of :mod:`.triton_tma`'s INT8 loop ends in ``wgmma.wait_group 0``
and the tensor cores drain before the next step is issued (BENCHMARKS.md, "The split last wave"). Here the loop is
written out: a ring of ``STAGES`` shared-memory buffers filled by the Tensor Memory Accelerator, each K step's
``wgmma`` issued asynchronously, then ``wait(1)``: the previous step's MMA is done, so its buffer takes the load
``STAGES - 1`` steps ahead while this step's MMA runs. The steps of all the program's output tiles form one
sequence, so the loads of the next tile are in flight during the epilogue of this one.

Scope (:func:`wgmma_fits`): what :func:`.triton_tma.tma_fits` accepts, INT8 only, without the low-rank branch, on
sm_90 (wgmma is Hopper's instruction). DualScale layers too (:func:`dual_fits`): per K step the weight tile is read
once and both sides' products are issued, each into its own accumulator, and both stay in flight during the next
step's loads (Triton's tiled kernel waits for each of the two dots). Epilogue
``acc · a_scale[m] (+ acc⁻ · a_scale⁻[m]) · w_scale[n] + bias`` in float32, one rounding per step (launched without
fused multiply-adds), the same operations in the same order as the other INT8 kernels, so the result equals the twin
(:func:`segquant.kernels.gemm_reference.code_scaled_gemm`) to the bit.

A second kernel takes the INT8 layers whose input scale changes every K tile (per-head input segments,
:func:`tile_scaled_fits`): each K tile's exact int32 sum is converted, scaled by its column's input scale and added to a
float32 tile, which :mod:`.triton_gemm`'s tiled kernel does while the tensor cores wait. Here the K tiles go in
pairs on two accumulators: both MMAs issued, the first one's sum rescaled (converted through the float mantissa,
``triton_gemm._small_int_to_float``) while the second one's MMA runs, then the second one's. In the twin's order:
``out + float(sum) · a_scale[m, j]`` per K tile from zero, then ``· w_scale[n]`` and the bias. (Keeping an MMA in
flight across the loop's back edge as well, ptxas serialized every MMA; four K tiles per iteration spilled.)
"""

from __future__ import annotations

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import mbarrier, tma, warpgroup_mma, warpgroup_mma_wait
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from segquant.kernels.gemm_reference import scale_tile_k
from segquant.kernels.gpu.triton_gemm import (MAGIC_BITS, MAGIC_FLOAT, graph_timed, k_contiguous, scale_strides,
                                              tuned_or_first)
from segquant.kernels.gpu.triton_tma import (TMA_MIN_M, device_properties, persistent_programs, sized_configs,
                                             tma_aligned, tma_fits)

#: wgmma's K per instruction for 8-bit operands, and the widest N an INT8 instruction takes here.
_INSTR_K = gl.constexpr(32)
_INSTR_N = gl.constexpr(128)
#: The TMA tile load (named ``async_copy_global_to_shared`` up to Triton 3.6, ``async_load`` later).
_tma_load = getattr(tma, "async_load", None) or tma.async_copy_global_to_shared


def _descriptor_blocks(nargs: dict) -> None:
    """Config pre-hook: the descriptors' block shapes (and their shared-memory layouts) are the config's tiles."""
    for name, rows in (("a_desc", nargs["BM"]), ("an_desc", nargs["BM"]), ("b_desc", nargs["BN"])):
        block = [rows, nargs["BK"]]
        nargs[name].block_shape = block
        nargs[name].layout = gl.NVMMASharedLayout.get_default_for(block, gl.int8)


# (BM, BN, BK, STAGES); 8 warps, two warpgroups: split along N for the 256-wide tiles (each thread then holds 32
# columns of the tile, not 64: their scales and bias in the epilogue fit the registers), else along M.
# Shared memory: STAGES · (BM + BN) · BK bytes. The slot of the MMA in flight cannot take a load, so STAGES slots
# keep STAGES - 2 loads in flight beside it, one fewer than Triton's synchronous loop with as many stages: the
# 4-stage rings (192 KB) match its 3.
_CONFIGS = [triton.Config({"BM": bm, "BN": bn, "BK": bk, "STAGES": st, "GROUP_M": 8, "WARPS_N": 2 if bn > bm else 1},
                          num_warps=8, num_stages=1, pre_hook=_descriptor_blocks)
            for bm, bn, bk, st in [(128, 256, 128, 3), (128, 256, 128, 4), (128, 256, 64, 5), (256, 128, 128, 3),
                                   (256, 128, 128, 4), (128, 128, 128, 5), (128, 128, 256, 3)]]


@gluon.jit
def _ring(a_desc, b_desc, STAGES: gl.constexpr, DUAL: gl.constexpr = False):
    """The shared-memory ring: ``STAGES`` A tiles (``DUAL``: twice, the negative side's in slots ``STAGES + s``),
    B tiles and their load barriers (initialized), in the descriptors' element type."""
    a_bufs = gl.allocate_shared_memory(a_desc.dtype, [STAGES * (1 + DUAL)] + a_desc.block_type.shape, a_desc.layout)
    b_bufs = gl.allocate_shared_memory(b_desc.dtype, [STAGES] + b_desc.block_type.shape, b_desc.layout)
    bars = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for s in gl.static_range(STAGES):
        mbarrier.init(bars.index(s), count=1)
    return a_bufs, b_bufs, bars


@gluon.jit
def _tile_position(tile, num_m, num_n, GROUP_M: gl.constexpr):
    """:func:`.triton_gemm.tile_position` (grouped tile order, so the B tiles a group shares stay in L2)."""
    group = GROUP_M * num_n
    first_m = (tile // group) * GROUP_M
    group_rows = gl.minimum(num_m - first_m, GROUP_M)
    return first_m + (tile % group) % group_rows, (tile % group) // group_rows


@gluon.jit
def _load_step(step, a_desc, b_desc, a_bufs, b_bufs, bars, k_tiles, num_m, num_n, total,
               NUM_SMS: gl.constexpr, STAGES: gl.constexpr, GROUP_M: gl.constexpr, an_desc=None,
               DUAL: gl.constexpr = False):
    """Start the TMA loads of this program's K step ``step`` (tile ``step // k_tiles``, K tile ``step % k_tiles``)
    into ring slot ``step % STAGES`` (``DUAL``: also the negative side's A tile from ``an_desc``); nothing past the
    last step (``total``)."""
    tile = gl.program_id(0) + (step // k_tiles) * NUM_SMS
    pid_m, pid_n = _tile_position(tile, num_m, num_n, GROUP_M)
    k0 = (step % k_tiles) * a_desc.block_type.shape[1]
    slot = step % STAGES
    live = step < total
    bar = bars.index(slot)
    mbarrier.expect(bar, (1 + DUAL) * a_desc.block_type.nbytes + b_desc.block_type.nbytes, pred=live)
    _tma_load(a_desc, [pid_m * a_desc.block_type.shape[0], k0], bar, a_bufs.index(slot), live)
    if DUAL:
        _tma_load(an_desc, [pid_m * a_desc.block_type.shape[0], k0], bar, a_bufs.index(STAGES + slot), live)
    _tma_load(b_desc, [pid_n * b_desc.block_type.shape[0], k0], bar, b_bufs.index(slot), live)


@gluon.jit
def _offsets(pid, BLOCK: gl.constexpr, layout: gl.constexpr, DIM: gl.constexpr):
    """The rows (``DIM`` 0, slice 1 of ``layout``) or columns (``DIM`` 1) ``(BLOCK,)`` of tile position ``pid``."""
    return pid * BLOCK + gl.arange(0, BLOCK, layout=gl.SliceLayout(1 - DIM, layout))


@gluon.jit
def _finish(out, offs_m, offs_n, M, N, c_ptr, stride_cm, bias_ptr, HAS_BIAS: gl.constexpr):
    """A scaled float32 tile ``(+ bias)``, stored in ``c``'s dtype (masked at the edges)."""
    if HAS_BIAS:
        out += gl.expand_dims(gl.load(bias_ptr + gl.where(offs_n < N, offs_n, 0)).to(gl.float32), 0)
    c_ptrs = c_ptr + gl.expand_dims(offs_m, 1) * stride_cm + gl.expand_dims(offs_n, 0)
    mask = gl.expand_dims(offs_m < M, 1) & gl.expand_dims(offs_n < N, 0)
    gl.store(c_ptrs, out.to(c_ptr.dtype.element_ty), mask=mask)


@gluon.jit
def _store_tile(acc, acc_neg, tile, num_m, num_n, M, N, c_ptr, as_ptr, asn_ptr, ws_ptr, a_col, w_col, bias_ptr,
                stride_cm, stride_sm, stride_wn, HAS_BIAS: gl.constexpr, DUAL: gl.constexpr, GROUP_M: gl.constexpr,
                BM: gl.constexpr, BN: gl.constexpr):
    """``acc · a_scale[m] (+ acc_neg · a_scale_neg[m]) · w_scale[n] (+ bias)`` in float32, stored in ``c``'s dtype
    (the other INT8 kernels' epilogue, step for step)."""
    layout: gl.constexpr = acc.type.layout
    pid_m, pid_n = _tile_position(tile, num_m, num_n, GROUP_M)
    offs_m, offs_n = _offsets(pid_m, BM, layout, 0), _offsets(pid_n, BN, layout, 1)
    rm, rn = gl.where(offs_m < M, offs_m, 0), gl.where(offs_n < N, offs_n, 0)
    out = acc.to(gl.float32) * gl.expand_dims(gl.load(as_ptr + rm * stride_sm + a_col), 1)
    if DUAL:
        out += acc_neg.to(gl.float32) * gl.expand_dims(gl.load(asn_ptr + rm * stride_sm + a_col), 1)
    out = out * gl.expand_dims(gl.load(ws_ptr + rn * stride_wn + w_col), 0)
    _finish(out, offs_m, offs_n, M, N, c_ptr, stride_cm, bias_ptr, HAS_BIAS)


@gluon.jit
def _wgmma_gemm(a_desc, an_desc, b_desc, c_ptr, as_ptr, asn_ptr, ws_ptr, acol_ptr, wcol_ptr, bias_ptr, M, N, K,
                M_BUCKET, stride_cm, stride_sm, stride_wn, NUM_SMS: gl.constexpr, HAS_BIAS: gl.constexpr,
                DUAL: gl.constexpr, BM: gl.constexpr, BN: gl.constexpr, BK: gl.constexpr, STAGES: gl.constexpr,
                GROUP_M: gl.constexpr, WARPS_N: gl.constexpr):
    layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[gl.num_warps() // WARPS_N, WARPS_N],
                                                     instr_shape=[16, _INSTR_N, _INSTR_K])
    a_bufs, b_bufs, bars = _ring(a_desc, b_desc, STAGES, DUAL)
    num_m, num_n, k_tiles = gl.cdiv(M, BM), gl.cdiv(N, BN), gl.cdiv(K, BK)
    tiles = gl.cdiv(num_m * num_n - gl.program_id(0), NUM_SMS)  # this program's output tiles
    total = tiles * k_tiles  # and K steps
    a_col, w_col = gl.load(acol_ptr), gl.load(wcol_ptr)
    for step in gl.static_range(STAGES - 1):
        _load_step(step, a_desc, b_desc, a_bufs, b_bufs, bars, k_tiles, num_m, num_n, total, NUM_SMS, STAGES, GROUP_M,
                   an_desc, DUAL)
    step = 0
    for t in range(tiles):
        acc = gl.zeros((BM, BN), gl.int32, layout)
        acc_neg = gl.zeros((BM, BN), gl.int32, layout)
        for _ in range(k_tiles):
            slot = step % STAGES
            mbarrier.wait(bars.index(slot), (step // STAGES) & 1)
            b = b_bufs.index(slot).permute((1, 0))
            acc = warpgroup_mma(a_bufs.index(slot), b, acc, is_async=True)
            if DUAL:  # the negative side's product with the same weight tile, in flight beside it
                acc_neg = warpgroup_mma(a_bufs.index(STAGES + slot), b, acc_neg, is_async=True)
                acc, acc_neg = warpgroup_mma_wait(num_outstanding=2, deps=(acc, acc_neg))
            else:
                acc = warpgroup_mma_wait(num_outstanding=1, deps=(acc, ))
            # the previous step's MMAs are done: its slot takes the load STAGES - 1 steps ahead (the next tile's
            # first ones near the end of this tile) while this step's run
            _load_step(step + STAGES - 1, a_desc, b_desc, a_bufs, b_bufs, bars, k_tiles, num_m, num_n, total,
                       NUM_SMS, STAGES, GROUP_M, an_desc, DUAL)
            step += 1
        if DUAL:
            acc, acc_neg = warpgroup_mma_wait(num_outstanding=0, deps=(acc, acc_neg))
        else:
            acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc, ))
        _store_tile(acc, acc_neg, gl.program_id(0) + t * NUM_SMS, num_m, num_n, M, N, c_ptr, as_ptr, asn_ptr, ws_ptr,
                    a_col, w_col, bias_ptr, stride_cm, stride_sm, stride_wn, HAS_BIAS, DUAL, GROUP_M, BM, BN)
    for s in gl.static_range(STAGES):
        mbarrier.invalidate(bars.index(s))


_wgmma_gemm_kernel = triton.autotune(configs=_CONFIGS, key=["M_BUCKET", "N", "K", "HAS_BIAS"],
                                     prune_configs_by={"early_config_prune": sized_configs},
                                     do_bench=graph_timed)(_wgmma_gemm)
#: DualScale: two int32 accumulators (64 registers each per thread on 128 x 128 tiles) and two A rings;
#: shared memory STAGES · (2 · BM + BN) · BK bytes.
_DUAL_CONFIGS = [triton.Config({"BM": 128, "BN": 128, "BK": bk, "STAGES": st, "GROUP_M": 8, "WARPS_N": 1},
                               num_warps=8, num_stages=1, pre_hook=_descriptor_blocks)
                 for bk, st in [(128, 4), (64, 6)]]
_wgmma_dual_kernel = triton.autotune(configs=_DUAL_CONFIGS, key=["M_BUCKET", "N", "K", "HAS_BIAS"],
                                     prune_configs_by={"early_config_prune": sized_configs},
                                     do_bench=graph_timed)(_wgmma_gemm)


def _on_hopper(a: torch.Tensor) -> bool:
    """``a`` is on an sm_90 GPU (wgmma is Hopper's instruction)."""
    return a.is_cuda and device_properties(a.device.index or 0).major == 9


def wgmma_fits(a: torch.Tensor, b: torch.Tensor, a_scale_neg, lowrank_t, scale_mode: int, input_varies: bool) -> bool:
    """INT8 codes and weights on an sm_90 GPU, no low-rank branch, and what the persistent TMA kernel takes
    (:func:`.triton_tma.tma_fits`: one input, no DualScale, scales constant along K, TMA's alignment)."""
    return (a.dtype == b.dtype == torch.int8 and lowrank_t is None and _on_hopper(a)
            and tma_fits(a, b, a_scale_neg, scale_mode, input_varies))


def dual_fits(a: torch.Tensor, b: torch.Tensor, a_scale_neg, lowrank_t, scale_mode: int, input_varies: bool) -> bool:
    """A DualScale INT8 layer (codes ``(1, M, 2K)``: both sides, ``K`` a multiple of 16) that the Gluon kernel takes
    with both products per weight tile in flight: otherwise as :func:`wgmma_fits`."""
    k = b.shape[1]
    return (a.dtype == b.dtype == torch.int8 and a_scale_neg is not None and lowrank_t is None and a.shape[0] == 1
            and a.shape[1] >= TMA_MIN_M and a.shape[2] == 2 * k and k % 16 == 0 and scale_mode == 0
            and not input_varies and _on_hopper(a) and tma_aligned(a, b))


def wgmma_gemm_gluon(a, b, a_scale, a_scale_neg, w_scale, a_col, w_col, bias, out_dtype: torch.dtype) -> torch.Tensor:
    """``(1, M, K·(1+dual))`` INT8 codes x ``(N, K)`` INT8 weights -> ``(M, N)`` (see :func:`wgmma_fits`,
    :func:`dual_fits`); ``a_scale`` (and DualScale's ``a_scale_neg``) ``(1, M|1, J)``, ``w_scale`` ``(N, J')``, column
    ``a_col[0]`` / ``w_col[0]`` of each."""
    dual = a_scale_neg is not None
    kernel = _wgmma_dual_kernel if dual else _wgmma_gemm_kernel
    return _launch(kernel, a, b, a_scale, a_scale_neg, w_scale, a_col, w_col, bias, out_dtype, DUAL=dual)


def _launch(kernel, a, b, a_scale, a_scale_neg, w_scale, a_col, w_col, bias, out_dtype: torch.dtype, *sizes: int,
            **constants) -> torch.Tensor:
    """Launch a kernel of this module, one program per SM at most; ``sizes``: its integer arguments between
    ``M_BUCKET`` and the strides (the per-K-tile kernel's ``K_ALIGN``); ``constants``: its own constexprs."""
    m, n, k = a.shape[1], b.shape[0], b.shape[1]
    out = torch.empty(m, n, device=a.device, dtype=out_dtype)
    ws, a_scale = w_scale.contiguous(), a_scale.contiguous()
    a_scale_neg = a_scale if a_scale_neg is None else a_scale_neg.contiguous()
    codes = k_contiguous(a[0])
    a_desc, an_desc, b_desc = _descriptors(codes[:, :k], codes[:, k:] if codes.shape[1] > k else codes, k_contiguous(b))
    sms = persistent_programs(a)

    def grid(meta: dict) -> tuple[int]:
        return (min(sms, triton.cdiv(m, meta["BM"]) * triton.cdiv(n, meta["BN"])),)

    kernel[grid](a_desc, an_desc, b_desc, out, a_scale, a_scale_neg, ws, a_col, w_col, bias if bias is not None else ws,
                 m, n, k, triton.next_power_of_2(m), *sizes, out.stride(0), scale_strides(a_scale)[1], ws.stride(0),
                 NUM_SMS=sms, HAS_BIAS=bias is not None, enable_fp_fusion=False, **constants)
    return out


def _descriptors(*tensors: torch.Tensor) -> list[TensorDescriptor]:
    """TMA descriptors of codes / weights ``(rows, K)``, with a placeholder block that each config's pre-hook replaces
    by its own tiles."""
    block = [_CONFIGS[0].kwargs["BM"], _CONFIGS[0].kwargs["BK"]]
    layout = gl.NVMMASharedLayout.get_default_for(block, gl.int8)
    return [TensorDescriptor.from_tensor(t, block, layout) for t in tensors]


# (BM, BN, BK, STAGES), 8 warps along M: two int32 accumulators and the float32 tile, 64 registers each per thread.
# BK is the layer's scale tile (:func:`segquant.kernels.gemm_reference.scale_tile_k`): 128 or 64 channels.
_TILE_SCALED_CONFIGS = [triton.Config({"BM": 128, "BN": 128, "BK": bk, "STAGES": st, "GROUP_M": 8}, num_warps=8,
                                      num_stages=1, pre_hook=_descriptor_blocks)
                        for bk, st in [(128, 4), (128, 3), (128, 6), (64, 6)]]


def _scale_tiled(configs, named_args, **kwargs):
    """The configs whose K tile is the layer's scale tile (so the float32 sum of scaled tiles is the twin's)."""
    args = {**named_args, **kwargs}
    width = scale_tile_k(args["K_ALIGN"], args["K"])
    return tuned_or_first([c for c in configs if c.kwargs["BK"] == width])


@gluon.jit
def _mma_step(step, acc, a_bufs, b_bufs, bars, STAGES: gl.constexpr):
    """Issue K step ``step``'s MMA into ``acc``'s registers (its value unused) once its ring slot is loaded."""
    slot = step % STAGES
    mbarrier.wait(bars.index(slot), (step // STAGES) & 1)
    return warpgroup_mma(a_bufs.index(slot), b_bufs.index(slot).permute((1, 0)), acc, use_acc=False, is_async=True)


@gluon.jit
def _add_scaled(out, part, s_rows, acol_ptr, k0):
    """``out + float(part) · a_scale[m, j(k0)]`` (``part``: a K tile's int32 sum, ``|part| ≤ 2²¹``, converted
    through the mantissa as ``triton_gemm._small_int_to_float``)."""
    x = (part + MAGIC_BITS).to(gl.float32, bitcast=True) - MAGIC_FLOAT
    return out + x * gl.expand_dims(gl.load(s_rows + gl.load(acol_ptr + k0)), 1)


@triton.autotune(configs=_TILE_SCALED_CONFIGS, key=["M_BUCKET", "N", "K", "K_ALIGN", "HAS_BIAS"],
                 prune_configs_by={"early_config_prune": _scale_tiled}, do_bench=graph_timed)
@gluon.jit
def _wgmma_tile_scaled_kernel(a_desc, an_desc, b_desc, c_ptr, as_ptr, asn_ptr, ws_ptr, acol_ptr, wcol_ptr, bias_ptr,
                              M, N, K, M_BUCKET, K_ALIGN, stride_cm, stride_sm, stride_wn, NUM_SMS: gl.constexpr,
                              HAS_BIAS: gl.constexpr, BM: gl.constexpr, BN: gl.constexpr, BK: gl.constexpr,
                              STAGES: gl.constexpr, GROUP_M: gl.constexpr):
    layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[gl.num_warps(), 1],
                                                     instr_shape=[16, _INSTR_N, _INSTR_K])
    a_bufs, b_bufs, bars = _ring(a_desc, b_desc, STAGES)
    num_m, num_n, k_tiles = gl.cdiv(M, BM), gl.cdiv(N, BN), gl.cdiv(K, BK)
    total = gl.cdiv(num_m * num_n - gl.program_id(0), NUM_SMS) * k_tiles  # this program's K steps, all tiles
    for first in gl.static_range(STAGES):  # every slot: a slot is refilled once the MMA that read it is done
        _load_step(first, a_desc, b_desc, a_bufs, b_bufs, bars, k_tiles, num_m, num_n, total, NUM_SMS, STAGES,
                   GROUP_M)
    acc_even = gl.zeros((BM, BN), gl.int32, layout)
    acc_odd = gl.zeros((BM, BN), gl.int32, layout)
    out = gl.zeros((BM, BN), gl.float32, layout)
    for pair in range(total // 2):  # k_tiles is even: a pair of K steps never straddles two tiles
        step = 2 * pair
        kt = step % k_tiles
        tile = gl.program_id(0) + (step // k_tiles) * NUM_SMS
        pid_m, pid_n = _tile_position(tile, num_m, num_n, GROUP_M)
        offs_m = _offsets(pid_m, BM, layout, 0)
        s_rows = as_ptr + gl.where(offs_m < M, offs_m, 0) * stride_sm
        # both MMAs of the pair issued, then the first one's rescale runs while the second one's MMA is in flight;
        # nothing stays in flight across the loop's back edge (where it did, ptxas serialized every MMA)
        even = _mma_step(step, acc_even, a_bufs, b_bufs, bars, STAGES)
        odd = _mma_step(step + 1, acc_odd, a_bufs, b_bufs, bars, STAGES)
        acc_even = warpgroup_mma_wait(num_outstanding=1, deps=(even, ))
        _load_step(step + STAGES, a_desc, b_desc, a_bufs, b_bufs, bars, k_tiles, num_m, num_n, total, NUM_SMS,
                   STAGES, GROUP_M)
        out = _add_scaled(out, acc_even, s_rows, acol_ptr, kt * BK)
        acc_odd = warpgroup_mma_wait(num_outstanding=0, deps=(odd, ))
        _load_step(step + 1 + STAGES, a_desc, b_desc, a_bufs, b_bufs, bars, k_tiles, num_m, num_n, total, NUM_SMS,
                   STAGES, GROUP_M)
        out = _add_scaled(out, acc_odd, s_rows, acol_ptr, kt * BK + BK)
        if kt + 2 == k_tiles:
            offs_n = _offsets(pid_n, BN, layout, 1)
            w_scale = gl.load(ws_ptr + gl.where(offs_n < N, offs_n, 0) * stride_wn + gl.load(wcol_ptr))
            _finish(out * gl.expand_dims(w_scale, 0), offs_m, offs_n, M, N, c_ptr, stride_cm, bias_ptr, HAS_BIAS)
            out = gl.zeros((BM, BN), gl.float32, layout)
    for s in gl.static_range(STAGES):
        mbarrier.invalidate(bars.index(s))


def tile_scaled_fits(a: torch.Tensor, b: torch.Tensor, a_scale: torch.Tensor, a_scale_neg, lowrank_t,
                     scale_mode: int, k_align: int) -> bool:
    """INT8 codes and weights on an sm_90 GPU with at least ``TMA_MIN_M`` rows, one input, no DualScale, no low-rank
    branch, in TMA's alignment, whose input scale changes along K but not the weight's (``scale_mode`` 1: per-head
    segments over per-channel weights), with a scale tile of 128 or 64 channels and an even number of K tiles."""
    k = a.shape[2]
    width = scale_tile_k(k_align, k)
    return (a.dtype == b.dtype == torch.int8 and a.shape[0] == 1 and a.shape[1] >= TMA_MIN_M and a_scale_neg is None
            and lowrank_t is None and scale_mode == 1 and a_scale.shape[2] > 1 and width in (64, 128)
            and triton.cdiv(k, width) % 2 == 0 and _on_hopper(a) and tma_aligned(a, b))


def wgmma_tile_scaled_gluon(a, b, a_scale, w_scale, a_col, w_col, bias, k_align: int,
                            out_dtype: torch.dtype) -> torch.Tensor:
    """``(1, M, K)`` INT8 codes x ``(N, K)`` INT8 weights -> ``(M, N)`` with the input scale column ``a_col[k]`` of
    ``a_scale`` ``(1, M|1, J)`` per K tile and weight scale column ``w_col[0]`` of ``w_scale`` ``(N, J')`` (see
    :func:`tile_scaled_fits`)."""
    return _launch(_wgmma_tile_scaled_kernel, a, b, a_scale, None, w_scale, a_col, w_col, bias, out_dtype, k_align)
