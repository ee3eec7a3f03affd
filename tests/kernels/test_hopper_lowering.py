"""The persistent TMA kernel and the tiled kernel compiled for Hopper (sm_90) on a machine without a GPU: Triton lowers
them to PTX and its bundled ``ptxas`` assembles it, which the CPU interpreter does not check (tensor descriptors,
wgmma, the split tail's atomics, software pipelining). Numerics are the interpreter's and the GPU tests' business."""

import re

import pytest

triton = pytest.importorskip("triton")

from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

POINTERS = dict(c_ptr="*bf16", as_ptr="*fp32", ws_ptr="*fp32", acol_ptr="*i32", wcol_ptr="*i32", bias_ptr="*bf16",
                t_ptr="*bf16", u_ptr="*bf16", count_ptr="*i32")


#: Shared memory a block may use on an H100 / H200 (227 KB).
HOPPER_SHARED_BYTES = 232448


def hopper_build(is_int: bool, split_tail: bool, has_lr: bool, config=None):
    """``_tma_gemm_kernel`` compiled for sm_90 with ``config`` (default: the first, FLUX's largest tiles, 128 x 256 x
    128, 8 warps, 3 stages)."""
    from segquant.kernels.gpu.triton_tma import _CONFIGS, _tma_gemm_kernel

    config = config or _CONFIGS[0]
    bm, bn, bk = config.kwargs["BM"], config.kwargs["BN"], config.kwargs["BK"]
    kernel = _tma_gemm_kernel.fn  # the JITFunction under the autotuner
    code = "i8" if is_int else "fp8e4nv"
    constants = dict(NUM_SMS=132, IS_INT=is_int, HAS_BIAS=True, HAS_LR=has_lr, R=32, SPLIT_TAIL=split_tail, BM=bm,
                     BN=bn, BK=bk, GROUP_M=8)
    signature = {name: "i32" for name in kernel.arg_names}
    signature.update(POINTERS, a_desc=f"tensordesc<{code}[{bm}, {bk}]>", b_desc=f"tensordesc<{code}[{bn}, {bk}]>",
                     partial_ptr="*i32" if is_int else "*fp32", **{name: "constexpr" for name in constants})
    source = ASTSource(fn=kernel, signature=signature,
                       constexprs={(kernel.arg_names.index(name),): value for name, value in constants.items()})
    options = dict(num_warps=config.num_warps, num_stages=config.num_stages)
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)


@pytest.mark.parametrize("is_int,split_tail,has_lr", [(True, False, False), (True, True, False), (False, True, True)])
def test_tma_kernel_lowers_to_wgmma_with_an_ordered_tail_count(is_int, split_tail, has_lr):
    ptx = hopper_build(is_int, split_tail, has_lr).asm["ptx"]
    assert "wgmma.mma_async" in ptx and "cp.async.bulk.tensor" in ptx  # tensor cores fed by TMA
    assert ("atom.global.gpu.acq_rel.add" in ptx) == split_tail  # a piece publishes its partial before counting in


def test_fp8_kernel_keeps_a_wgmma_in_flight():
    # one K step's MMA stays in flight while the next is issued (Triton does this for float32 accumulators only, so
    # not for INT8: BENCHMARKS.md "The split last wave"); a change that made the FP8 loop synchronous would show here
    for split_tail in (False, True):
        assert "wgmma.wait_group.sync.aligned 1;" in hopper_build(False, split_tail, False).asm["ptx"]


def test_every_tma_config_fits_hoppers_shared_memory():
    from segquant.kernels.gpu.triton_tma import _CONFIGS

    for config in _CONFIGS:
        for is_int in (True, False):
            shared = hopper_build(is_int, True, False, config).metadata.shared
            assert shared <= HOPPER_SHARED_BYTES, (config, is_int, shared)


def tiled_build(fmt: str, tile_scale: bool, scale_blocks: int, mode: int):
    """``_scaled_gemm_kernel`` (the tiled kernel) for sm_90, 128 x 256 x 128 tiles, 8 warps, 3 stages, with the
    16-byte alignment a launch on real tensors gets (without it Triton does not pipeline the loads)."""
    from segquant.kernels.gpu.triton_gemm import _scaled_gemm_kernel

    kernel = _scaled_gemm_kernel.fn.fn  # under the autotuner and the heuristics
    constants = dict(MODE=mode, DUAL=False, HAS_BIAS=True, HAS_LR=False, R=16, IS_INT=fmt == "i8", W4=False,
                     A_KIND=0 if fmt == "i8" else -1, TILE_SCALE=tile_scale, BM=128, BN=256, BK=128, GROUP_M=8,
                     EVEN_K=True, ONE_GROUP=True, SCALE_BLOCKS=scale_blocks)
    signature = {name: "i32" for name in kernel.arg_names}
    signature.update(POINTERS, a_ptr=f"*{fmt}", b_ptr=f"*{fmt}", asn_ptr="*fp32",
                     **{name: "constexpr" for name in constants})
    aligned = [name for name in kernel.arg_names if name.endswith("_ptr") or name.startswith("stride")
               or name in ("N", "K", "K_ALIGN")]
    source = ASTSource(fn=kernel, signature={name: signature[name] for name in kernel.arg_names},
                       constexprs={(kernel.arg_names.index(name),): value for name, value in constants.items()},
                       attrs={(kernel.arg_names.index(name),): [["tt.divisibility", 16]] for name in aligned})
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=8, num_stages=3))


@pytest.mark.parametrize("fmt", ["i8", "fp8e4nv"])
def test_scale_blocks_are_pipelined_loops_of_their_own(fmt):
    """FLUX's ``cat`` layer (5 blocks of 3072 with their own scale): every block's loop is software-pipelined as the
    plain layer's one loop is, and in FP8 each keeps a wgmma in flight, where the per-K-tile scaled loop waits for
    every MMA (it reads each tile's result to scale it)."""
    def count(ptx: str, pattern: str) -> int:
        return len(re.findall(pattern, ptx))

    plain = tiled_build(fmt, False, 0, 1).asm["ptx"]
    per_tile = tiled_build(fmt, True, 0, 2).asm["ptx"]
    blocks = tiled_build(fmt, True, 5, 2).asm["ptx"]
    copies = r"cp\.async\.c[ga]"
    assert count(plain, copies) > 0 and count(blocks, copies) == 5 * count(plain, copies)
    in_flight = "wgmma.wait_group.sync.aligned 1;"
    if fmt == "fp8e4nv":
        assert count(plain, in_flight) == 1 and count(blocks, in_flight) == 5 and count(per_tile, in_flight) == 0
