"""CPU time of the GPU backend's call path without the GPU: where the eager (non-graph) launch cost goes.

Times, on the CPU with tiny tensors, (1) the op ``segquant::scaled_gemm`` on meta tensors against
calling its (fake) implementation directly (the dispatcher's share), (2) the Python wrappers of the tiled
kernel, the GEMV and the persistent TMA kernel with the Triton launch replaced by a no-op (our share), and (3) the
op's whole CUDA implementation as a compute-bound INT8 layer takes it, from the routing (``gemm_kernels``, the
remembered choice of ``fastest_kernel``) to the TMA kernel's launch, again without the launch. What is left of a
measured per-layer eager cost on the GPU (``gemm_w8a8.py``'s ``host_us``) is Triton's own launch path (autotuner,
specialization, descriptors, driver call).

    PYTHONPATH=. python benchmarks/launch_overhead.py
"""

from __future__ import annotations

import time
from unittest import mock

import torch

from segquant.kernels.gpu import ops, triton_gemm, triton_gemv, triton_tma  # noqa: F401 (ops registers the op)
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
    print(f"op dispatch: {op - bare:.1f} us per call (op {op:.1f} - its kernel called directly {bare:.1f})")
    tiled, gemv = case(m=256, n=64, k=128, fmt="int8", rank=8), one_input_scale(case(m=1, n=64, k=128, fmt="int8"))
    a, b, a_scale, a_neg, w_scale, _, w_col, bias, t, u, out_segment, _, k_align, out_dtype = gemv
    persistent = one_input_scale(case(m=256, n=64, k=128, fmt="int8"))
    pa, pb, pa_scale, _, pw_scale, pa_col, pw_col, pbias, *_ = persistent
    with (mock.patch.object(triton_gemm, "_scaled_gemm_kernel", _NoLaunch()),
          mock.patch.object(triton_gemv, "_gemv_kernel", _NoLaunch()),
          mock.patch.object(triton_tma, "_tma_gemm_kernel", _NoLaunch())):
        tiled_us = per_call_us(lambda: triton_gemm.scaled_gemm_triton(*tiled))
        gemv_us = per_call_us(lambda: triton_gemv.gemv_triton(a, b, a_scale, a_neg, w_scale, w_col, bias, t, u,
                                                              out_segment, k_align, out_dtype))
        tma_us = per_call_us(lambda: triton_tma.tma_gemm_triton(pa, pb, pa_scale, pw_scale, pa_col, pw_col, pbias,
                                                                None, None, torch.bfloat16))
        routed_us = per_call_us(routed_to_tma(persistent))
    print(f"tiled-kernel wrapper without the launch: {tiled_us:.1f} us; GEMV wrapper: {gemv_us:.1f} us; "
          f"persistent TMA wrapper: {tma_us:.1f} us")
    print(f"the op's CUDA implementation, routed to the TMA kernel, without the launch: {routed_us:.1f} us")


def routed_to_tma(args: tuple):
    """A call of the op's CUDA implementation on ``args`` (a compute-bound INT8 layer) after a first call that
    remembered the TMA kernel as the fastest, as every later call of a compiled model finds it."""
    first_timing = {"tma": 1.0}
    with (mock.patch.object(triton_gemm, "graph_timed", lambda kernel, _: first_timing.get(kernel.__name__, 2.0)),
          mock.patch.object(ops, "agreeing", lambda key, kernels: kernels),
          mock.patch.object(torch.cuda, "is_current_stream_capturing", lambda: False)):
        ops._scaled_gemm_cuda(*args)
    return lambda: ops._scaled_gemm_cuda(*args)


if __name__ == "__main__":
    main()
