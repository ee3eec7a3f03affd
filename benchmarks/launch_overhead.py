"""CPU time of the GPU backend's call path without the GPU: where the eager (non-graph) launch cost goes.

Times, on the CPU with tiny tensors, (1) the custom op ``segquant::scaled_gemm`` on meta tensors against
calling its (fake) implementation directly (the dispatcher's share), and (2) the Python wrappers of the tiled
kernel and the GEMV with the Triton launch replaced by a no-op (our share). What is left of a measured
per-layer eager cost on the GPU is Triton's own launch path (autotuner, specialization, driver call).

    PYTHONPATH=. python benchmarks/launch_overhead.py
"""

from __future__ import annotations

import time

import torch

from segquant.kernels.gpu import ops, triton_gemm, triton_gemv  # noqa: F401 (ops registers the custom op)
from tests.kernels.interpret_triton_gemm import case, one_input_scale


class _NoLaunch:
    """Stands in for a Triton kernel: ``kernel[grid](...)`` does nothing."""

    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


def per_call_us(fn, calls: int = 1000, repeats: int = 7) -> float:
    """The fastest of ``repeats`` averages over ``calls`` calls (a shared CPU's noise only adds time)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) / calls * 1e6)
    return best


def main() -> None:
    on_meta = [x.to("meta") if isinstance(x, torch.Tensor) else x for x in one_input_scale(case(m=2, n=16, k=32,
                                                                                          fmt="int8"))]
    with torch.inference_mode():  # meta tensors: the op runs its fake implementation, a bare new_empty
        bare = per_call_us(lambda: ops._scaled_gemm_fake(*on_meta))
        op = per_call_us(lambda: torch.ops.segquant.scaled_gemm(*on_meta))
    print(f"custom op dispatch: {op - bare:.1f} us per call (op {op:.1f} - its kernel called directly {bare:.1f})")
    tiled, gemv = case(m=256, n=64, k=128, fmt="int8", rank=8), one_input_scale(case(m=1, n=64, k=128, fmt="int8"))
    a, b, a_scale, a_neg, w_scale, _, w_col, bias, t, u, out_segment, _, k_align, out_dtype = gemv
    saved = triton_gemm._scaled_gemm_kernel, triton_gemv._gemv_kernel
    triton_gemm._scaled_gemm_kernel, triton_gemv._gemv_kernel = _NoLaunch(), _NoLaunch()
    try:
        tiled_us = per_call_us(lambda: triton_gemm.scaled_gemm_triton(*tiled))
        gemv_us = per_call_us(lambda: triton_gemv.gemv_triton(a, b, a_scale, a_neg, w_scale, w_col, bias, t, u,
                                                              out_segment, k_align, out_dtype))
    finally:
        triton_gemm._scaled_gemm_kernel, triton_gemv._gemv_kernel = saved
    print(f"tiled-kernel wrapper without the launch: {tiled_us:.1f} us; GEMV wrapper: {gemv_us:.1f} us")


if __name__ == "__main__":
    main()
