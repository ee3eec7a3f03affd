"""The persistent TMA kernel compiled for Hopper (sm_90) on a machine without a GPU: Triton lowers it to PTX and
its bundled ``ptxas`` assembles it, which the CPU interpreter does not check (tensor descriptors, wgmma, the split
tail's atomics). Numerics are the interpreter's and the GPU tests' business."""

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
