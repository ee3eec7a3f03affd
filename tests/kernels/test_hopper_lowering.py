"""The persistent TMA kernel compiled for Hopper (sm_90) on a machine without a GPU: Triton lowers it to PTX and
its bundled ``ptxas`` assembles it, which the CPU interpreter does not check (tensor descriptors, wgmma, the split
tail's atomics). Numerics are the interpreter's and the GPU tests' business."""

import pytest

triton = pytest.importorskip("triton")

from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

POINTERS = dict(c_ptr="*bf16", as_ptr="*fp32", ws_ptr="*fp32", acol_ptr="*i32", wcol_ptr="*i32", bias_ptr="*bf16",
                t_ptr="*bf16", u_ptr="*bf16", count_ptr="*i32")


def hopper_ptx(is_int: bool, split_tail: bool, has_lr: bool) -> str:
    """PTX of ``_tma_gemm_kernel`` for sm_90 with FLUX's largest tile config (128 x 256 x 128, 8 warps, 3 stages)."""
    from segquant.kernels.gpu.triton_tma import _tma_gemm_kernel

    kernel = _tma_gemm_kernel.fn  # the JITFunction under the autotuner
    code = "i8" if is_int else "fp8e4nv"
    constants = dict(NUM_SMS=132, IS_INT=is_int, HAS_BIAS=True, HAS_LR=has_lr, R=32, SPLIT_TAIL=split_tail, BM=128,
                     BN=256, BK=128, GROUP_M=8)
    signature = {name: "i32" for name in kernel.arg_names}
    signature.update(POINTERS, a_desc=f"tensordesc<{code}[128, 128]>", b_desc=f"tensordesc<{code}[256, 128]>",
                     partial_ptr="*i32" if is_int else "*fp32", **{name: "constexpr" for name in constants})
    source = ASTSource(fn=kernel, signature=signature,
                       constexprs={(kernel.arg_names.index(name),): value for name, value in constants.items()})
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=8, num_stages=3))
    return compiled.asm["ptx"]


@pytest.mark.parametrize("is_int,split_tail,has_lr", [(True, False, False), (True, True, False), (False, True, True)])
def test_tma_kernel_lowers_to_wgmma_with_an_ordered_tail_count(is_int, split_tail, has_lr):
    ptx = hopper_ptx(is_int, split_tail, has_lr)
    assert "wgmma.mma_async" in ptx and "cp.async.bulk.tensor" in ptx  # tensor cores fed by TMA
    assert ("atom.global.gpu.acq_rel.add" in ptx) == split_tail  # a piece publishes its partial before counting in
