"""Persistent TMA GEMM for the compute-bound 8-bit layers on Hopper: INT8 x INT8 (int32) or FP8 E4M3 x E4M3
(float32, promoted every K tile as in :mod:`.triton_gemm`), one input, scales constant along K.

The tiled kernel of :mod:`.triton_gemm` loads its tiles through pointers (``cp.async``) and launches one
program per output tile. Here each of ``NUM_SMS`` programs walks its share of the output tiles (grouped
as in :func:`.triton_gemm.tile_position`), the A and B tiles arrive by the Tensor Memory Accelerator
(host-built descriptors; out-of-range rows and the K tail read as zeros, so no masks in the mainloop) and the
compiler pipelines the K loop across tile boundaries (``flatten``). Epilogue: ``acc · a_scale[m] ·
w_scale[n]``, then the shared :func:`.triton_gemm.finish_tile` (bias, low-rank branch, store).

Same arguments and math as the op (:mod:`segquant.kernels.gemm_reference`), restricted by :func:`tma_fits`.
``SEGQUANT_TRITON_AUTOTUNE=0`` in the environment skips autotuning (first config; for tests).
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from segquant.kernels.gpu.triton_gemm import (_dot, finish_tile, graph_timed, lowrank_args, row_tile_fits,
                                              scale_strides, tile_position, tuned_or_first)

#: Rows from which an 8-bit layer is compute-bound enough for the persistent kernel.
TMA_MIN_M = 128


def _block_shapes(nargs: dict) -> None:
    """Config pre-hook: the descriptors' block shapes are the config's tiles."""
    nargs["a_desc"].block_shape = [nargs["BM"], nargs["BK"]]
    nargs["b_desc"].block_shape = [nargs["BN"], nargs["BK"]]


# (BM, BN, BK, warps, stages)
_CONFIGS = [triton.Config({"BM": bm, "BN": bn, "BK": bk, "GROUP_M": 8}, num_warps=w, num_stages=st,
                          pre_hook=_block_shapes)
            for bm, bn, bk, w, st in [(128, 256, 128, 8, 3), (256, 128, 128, 8, 3), (128, 128, 128, 8, 4),
                                      (128, 256, 64, 8, 4), (128, 128, 64, 4, 5), (64, 128, 128, 4, 4),
                                      (64, 256, 128, 8, 3)]]


def _sized(configs, named_args, **kwargs):
    """The configs whose row tiles suit M (64-row tiles only up to :data:`.triton_gemm.MID_M`)."""
    m = {**named_args, **kwargs}["M"]
    return tuned_or_first([c for c in configs if row_tile_fits(c.kwargs["BM"], m)])


@triton.autotune(configs=_CONFIGS, key=["M_BUCKET", "N", "K", "IS_INT", "HAS_LR"],
                 prune_configs_by={"early_config_prune": _sized}, do_bench=graph_timed)
@triton.jit
def _tma_gemm_kernel(a_desc, b_desc, c_ptr, as_ptr, ws_ptr, acol_ptr, wcol_ptr, bias_ptr, t_ptr, u_ptr,
                     M, N, K, M_BUCKET, RANK, stride_cm, stride_sm, stride_wn, stride_tm, stride_un,
                     NUM_SMS: tl.constexpr, IS_INT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_LR: tl.constexpr,
                     R: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr):
    num_m, num_n = tl.cdiv(M, BM), tl.cdiv(N, BN)
    a_col, w_col = tl.load(acol_ptr), tl.load(wcol_ptr)
    # The epilogue counts its tiles itself: the flattened loop's pipeliner splits the loop into prologue and
    # epilogue, and a value used in both is what it handles badly (as in Triton's persistent-matmul tutorial).
    done = tl.program_id(0) - NUM_SMS
    for tile in tl.range(tl.program_id(0), num_m * num_n, NUM_SMS, flatten=True):
        pid_m, pid_n = tile_position(tile, num_m, num_n, GROUP_M)
        acc = tl.zeros((BM, BN), tl.int32 if IS_INT else tl.float32)
        for k0 in range(0, K, BK):
            a = a_desc.load([pid_m * BM, k0])
            b = b_desc.load([pid_n * BN, k0])
            acc = _dot(a, b.T, acc, IS_INT, BK)
        done += NUM_SMS
        pid_m, pid_n = tile_position(done, num_m, num_n, GROUP_M)
        offs_m, offs_n = pid_m * BM + tl.arange(0, BM), pid_n * BN + tl.arange(0, BN)
        rm, rn = tl.where(offs_m < M, offs_m, 0), tl.where(offs_n < N, offs_n, 0)
        out = acc.to(tl.float32) * tl.load(as_ptr + rm * stride_sm + a_col)[:, None]
        out = out * tl.load(ws_ptr + rn * stride_wn + w_col)[None, :]
        finish_tile(out, offs_m, offs_n, M, N, c_ptr, stride_cm, bias_ptr, t_ptr, u_ptr, stride_tm, stride_un, RANK,
                    HAS_BIAS, HAS_LR, R)


def tma_fits(a: torch.Tensor, b: torch.Tensor, a_scale_neg, scale_mode: int, input_varies: bool) -> bool:
    """An 8-bit layer with at least ``TMA_MIN_M`` rows, one input (``Sa == 1``), no DualScale, scales constant
    along K (``scale_mode`` 0), rows of 16-byte multiples starting at 16-byte offsets (TMA's alignment), on a
    GPU with TMA (sm_90+)."""
    return (b.dtype == a.dtype and a.dtype in (torch.int8, torch.float8_e4m3fn) and a.shape[0] == 1
            and a.shape[1] >= TMA_MIN_M and a_scale_neg is None and scale_mode == 0 and not input_varies
            and a.shape[2] % 16 == 0 and a.storage_offset() % 16 == 0 and b.storage_offset() % 16 == 0
            and (not a.is_cuda or _properties(a.device.index or 0).major >= 9))


@functools.cache
def _properties(device_index: int):
    """The CUDA device's properties (compute capability, SM count), read once per device."""
    return torch.cuda.get_device_properties(device_index)


def tma_gemm_triton(a, b, a_scale, w_scale, a_col, w_col, bias, lowrank_t, lowrank_up,
                    out_dtype: torch.dtype) -> torch.Tensor:
    """``(1, M, K)`` 8-bit codes x ``(N, K)`` weights of the same format -> ``(M, N)`` (see :func:`tma_fits`);
    ``a_scale`` ``(1, M|1, J)``, ``w_scale`` ``(N, J')``, column ``a_col[0]`` / ``w_col[0]`` of each."""
    m, k, n = a.shape[1], a.shape[2], b.shape[0]
    out = torch.empty(m, n, device=a.device, dtype=out_dtype)
    a2, b = a[0].contiguous(), b.contiguous()
    ws, a_scale = w_scale.contiguous(), a_scale.contiguous()
    t, u, rank = lowrank_args(lowrank_t, lowrank_up, ws)
    sms = _properties(a.device.index or 0).multi_processor_count if a.is_cuda else 4
    grid = lambda meta: (min(sms, triton.cdiv(m, meta["BM"]) * triton.cdiv(n, meta["BN"])),)  # noqa: E731
    _tma_gemm_kernel[grid](
        TensorDescriptor.from_tensor(a2, [1, 1]), TensorDescriptor.from_tensor(b, [1, 1]), out, a_scale, ws,
        a_col, w_col, bias if bias is not None else ws, t, u,
        m, n, k, triton.next_power_of_2(m), rank, out.stride(0), scale_strides(a_scale)[1], ws.stride(0),
        t.stride(0), u.stride(0),
        NUM_SMS=sms, IS_INT=a.dtype == torch.int8, HAS_BIAS=bias is not None, HAS_LR=lowrank_t is not None,
        R=max(16, triton.next_power_of_2(rank)))
    return out
