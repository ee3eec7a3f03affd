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
sm_90 (wgmma is Hopper's instruction). Epilogue ``acc · a_scale[m] · w_scale[n] + bias`` in float32, one rounding
per step (launched without fused multiply-adds), the same operations in the same order as the other INT8 kernels,
so the result equals the twin (:func:`segquant.kernels.gemm_reference.integer_scaled_gemm`) to the bit.
"""

from __future__ import annotations

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import mbarrier, tma, warpgroup_mma, warpgroup_mma_wait
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from segquant.kernels.gpu.triton_gemm import graph_timed, k_contiguous, row_tile_fits, scale_strides, tuned_or_first
from segquant.kernels.gpu.triton_tma import device_properties, persistent_programs, tma_fits

#: wgmma's K per instruction for 8-bit operands, and the widest N an INT8 instruction takes here.
_INSTR_K = gl.constexpr(32)
_INSTR_N = gl.constexpr(128)
#: The TMA tile load (named ``async_copy_global_to_shared`` up to Triton 3.6, ``async_load`` later).
_tma_load = getattr(tma, "async_load", None) or tma.async_copy_global_to_shared


def _descriptor_blocks(nargs: dict) -> None:
    """Config pre-hook: the descriptors' block shapes (and their shared-memory layouts) are the config's tiles."""
    for name, rows in (("a_desc", nargs["BM"]), ("b_desc", nargs["BN"])):
        block = [rows, nargs["BK"]]
        nargs[name].block_shape = block
        nargs[name].layout = gl.NVMMASharedLayout.get_default_for(block, gl.int8)


# (BM, BN, BK, STAGES); 8 warps, two warpgroups: split along N for the 256-wide tiles (each thread then holds 32
# columns of the tile, not 64: their scales and bias in the epilogue fit the registers), else along M.
# Shared memory: STAGES · (BM + BN) · BK bytes.
_CONFIGS = [triton.Config({"BM": bm, "BN": bn, "BK": bk, "STAGES": st, "GROUP_M": 8, "WARPS_N": 2 if bn > bm else 1},
                          num_warps=8, num_stages=1, pre_hook=_descriptor_blocks)
            for bm, bn, bk, st in [(128, 256, 128, 3), (128, 256, 64, 5), (256, 128, 128, 3), (128, 128, 128, 5),
                                   (128, 128, 256, 3)]]


def _sized(configs, named_args, **kwargs):
    """The configs whose row tiles suit M (as the persistent Triton kernel's)."""
    m = {**named_args, **kwargs}["M"]
    return tuned_or_first([c for c in configs if row_tile_fits(c.kwargs["BM"], m)])


@gluon.jit
def _tile_position(tile, num_m, num_n, GROUP_M: gl.constexpr):
    """:func:`.triton_gemm.tile_position` (grouped tile order, so the B tiles a group shares stay in L2)."""
    group = GROUP_M * num_n
    first_m = (tile // group) * GROUP_M
    group_rows = gl.minimum(num_m - first_m, GROUP_M)
    return first_m + (tile % group) % group_rows, (tile % group) // group_rows


@gluon.jit
def _load_step(step, a_desc, b_desc, a_bufs, b_bufs, bars, k_tiles, num_m, num_n, total,
               NUM_SMS: gl.constexpr, STAGES: gl.constexpr, GROUP_M: gl.constexpr):
    """Start the TMA loads of this program's K step ``step`` (tile ``step // k_tiles``, K tile ``step % k_tiles``)
    into ring slot ``step % STAGES``; nothing past the last step (``total``)."""
    tile = gl.program_id(0) + (step // k_tiles) * NUM_SMS
    pid_m, pid_n = _tile_position(tile, num_m, num_n, GROUP_M)
    k0 = (step % k_tiles) * a_desc.block_type.shape[1]
    slot = step % STAGES
    live = step < total
    bar = bars.index(slot)
    mbarrier.expect(bar, a_desc.block_type.nbytes + b_desc.block_type.nbytes, pred=live)
    _tma_load(a_desc, [pid_m * a_desc.block_type.shape[0], k0], bar, a_bufs.index(slot), live)
    _tma_load(b_desc, [pid_n * b_desc.block_type.shape[0], k0], bar, b_bufs.index(slot), live)


@gluon.jit
def _store_tile(acc, tile, num_m, num_n, M, N, c_ptr, as_ptr, ws_ptr, a_col, w_col, bias_ptr, stride_cm, stride_sm,
                stride_wn, HAS_BIAS: gl.constexpr, GROUP_M: gl.constexpr, BM: gl.constexpr, BN: gl.constexpr):
    """``acc · a_scale[m] · w_scale[n] (+ bias)`` in float32, stored in ``c``'s dtype (the other INT8 kernels'
    epilogue, step for step)."""
    pid_m, pid_n = _tile_position(tile, num_m, num_n, GROUP_M)
    offs_m = pid_m * BM + gl.arange(0, BM, layout=gl.SliceLayout(1, acc.type.layout))
    offs_n = pid_n * BN + gl.arange(0, BN, layout=gl.SliceLayout(0, acc.type.layout))
    rm, rn = gl.where(offs_m < M, offs_m, 0), gl.where(offs_n < N, offs_n, 0)
    out = acc.to(gl.float32) * gl.expand_dims(gl.load(as_ptr + rm * stride_sm + a_col), 1)
    out = out * gl.expand_dims(gl.load(ws_ptr + rn * stride_wn + w_col), 0)
    if HAS_BIAS:
        out += gl.expand_dims(gl.load(bias_ptr + rn).to(gl.float32), 0)
    c_ptrs = c_ptr + gl.expand_dims(offs_m, 1) * stride_cm + gl.expand_dims(offs_n, 0)
    mask = gl.expand_dims(offs_m < M, 1) & gl.expand_dims(offs_n < N, 0)
    gl.store(c_ptrs, out.to(c_ptr.dtype.element_ty), mask=mask)


@triton.autotune(configs=_CONFIGS, key=["M_BUCKET", "N", "K", "HAS_BIAS"],
                 prune_configs_by={"early_config_prune": _sized}, do_bench=graph_timed)
@gluon.jit
def _wgmma_gemm_kernel(a_desc, b_desc, c_ptr, as_ptr, ws_ptr, acol_ptr, wcol_ptr, bias_ptr, M, N, K, M_BUCKET,
                       stride_cm, stride_sm, stride_wn, NUM_SMS: gl.constexpr, HAS_BIAS: gl.constexpr,
                       BM: gl.constexpr, BN: gl.constexpr, BK: gl.constexpr, STAGES: gl.constexpr,
                       GROUP_M: gl.constexpr, WARPS_N: gl.constexpr):
    layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[gl.num_warps() // WARPS_N, WARPS_N],
                                                     instr_shape=[16, _INSTR_N, _INSTR_K])
    a_bufs = gl.allocate_shared_memory(gl.int8, [STAGES, BM, BK], a_desc.layout)
    b_bufs = gl.allocate_shared_memory(gl.int8, [STAGES, BN, BK], b_desc.layout)
    bars = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for s in gl.static_range(STAGES):
        mbarrier.init(bars.index(s), count=1)
    num_m, num_n, k_tiles = gl.cdiv(M, BM), gl.cdiv(N, BN), gl.cdiv(K, BK)
    tiles = gl.cdiv(num_m * num_n - gl.program_id(0), NUM_SMS)  # this program's output tiles
    total = tiles * k_tiles  # and K steps
    a_col, w_col = gl.load(acol_ptr), gl.load(wcol_ptr)
    for step in gl.static_range(STAGES - 1):
        _load_step(step, a_desc, b_desc, a_bufs, b_bufs, bars, k_tiles, num_m, num_n, total, NUM_SMS, STAGES, GROUP_M)
    step = 0
    for t in range(tiles):
        acc = gl.zeros((BM, BN), gl.int32, layout)
        for _ in range(k_tiles):
            slot = step % STAGES
            mbarrier.wait(bars.index(slot), (step // STAGES) & 1)
            acc = warpgroup_mma(a_bufs.index(slot), b_bufs.index(slot).permute((1, 0)), acc, is_async=True)
            # the previous step's MMA is done: its slot takes the load STAGES - 1 steps ahead (the next tile's
            # first ones near the end of this tile) while this step's MMA runs
            acc = warpgroup_mma_wait(num_outstanding=1, deps=(acc, ))
            _load_step(step + STAGES - 1, a_desc, b_desc, a_bufs, b_bufs, bars, k_tiles, num_m, num_n, total,
                       NUM_SMS, STAGES, GROUP_M)
            step += 1
        acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc, ))
        _store_tile(acc, gl.program_id(0) + t * NUM_SMS, num_m, num_n, M, N, c_ptr, as_ptr, ws_ptr, a_col, w_col,
                    bias_ptr, stride_cm, stride_sm, stride_wn, HAS_BIAS, GROUP_M, BM, BN)
    for s in gl.static_range(STAGES):
        mbarrier.invalidate(bars.index(s))


def wgmma_fits(a: torch.Tensor, b: torch.Tensor, a_scale_neg, lowrank_t, scale_mode: int, input_varies: bool) -> bool:
    """INT8 codes and weights on an sm_90 GPU, no low-rank branch, and what the persistent TMA kernel takes
    (:func:`.triton_tma.tma_fits`: one input, no DualScale, scales constant along K, TMA's alignment)."""
    return (a.dtype == b.dtype == torch.int8 and lowrank_t is None and a.is_cuda
            and device_properties(a.device.index or 0).major == 9
            and tma_fits(a, b, a_scale_neg, scale_mode, input_varies))


def wgmma_gemm_gluon(a, b, a_scale, w_scale, a_col, w_col, bias, out_dtype: torch.dtype) -> torch.Tensor:
    """``(1, M, K)`` INT8 codes x ``(N, K)`` INT8 weights -> ``(M, N)`` (see :func:`wgmma_fits`); ``a_scale``
    ``(1, M|1, J)``, ``w_scale`` ``(N, J')``, column ``a_col[0]`` / ``w_col[0]`` of each."""
    m, k, n = a.shape[1], a.shape[2], b.shape[0]
    out = torch.empty(m, n, device=a.device, dtype=out_dtype)
    a2, b = k_contiguous(a[0]), k_contiguous(b)
    ws, a_scale = w_scale.contiguous(), a_scale.contiguous()
    sms = persistent_programs(a)
    placeholder = [_CONFIGS[0].kwargs["BM"], _CONFIGS[0].kwargs["BK"]]  # the pre-hook sets each config's own
    a_desc = TensorDescriptor.from_tensor(a2, placeholder, gl.NVMMASharedLayout.get_default_for(placeholder, gl.int8))
    b_desc = TensorDescriptor.from_tensor(b, placeholder, gl.NVMMASharedLayout.get_default_for(placeholder, gl.int8))

    def grid(meta: dict) -> tuple[int]:
        return (min(sms, triton.cdiv(m, meta["BM"]) * triton.cdiv(n, meta["BN"])),)

    _wgmma_gemm_kernel[grid](
        a_desc, b_desc, out, a_scale, ws, a_col, w_col, bias if bias is not None else ws, m, n, k,
        triton.next_power_of_2(m), out.stride(0), scale_strides(a_scale)[1], ws.stride(0),
        NUM_SMS=sms, HAS_BIAS=bias is not None, enable_fp_fusion=False)
    return out
