"""Host time of the op's Python layers, measured on the CPU where no GPU is lent: what run 20's ``host`` step could
not take apart on the GPU machine (BENCHMARKS.md "Run 20").

- ``dispatch``: a no-op behind ``segquant::scaled_gemm``'s schema, registered with ``torch.library.custom_op`` and
  with ``torch.library.define`` / ``impl`` (as the op is since 2026-12-06), against calling it directly, under
  ``torch.inference_mode`` and under ``torch.no_grad`` (as diffusers pipelines and ``segquant eval`` run). Run 20
  measured the op's dispatcher at 17–27 µs per call on the H100 machine.
- ``wrappers``: each Triton route's Python (:func:`~segquant.kernels.gpu.triton_gemm.scaled_gemm_triton`,
  :func:`~segquant.kernels.gpu.triton_tma.tma_gemm_triton`, :func:`~segquant.kernels.gpu.triton_gemv.gemv_triton`)
  with its kernel launch stubbed: run 20's ``host_no_autotuner_us`` (49–92 µs) less this is Triton's own launch.
- ``replay``: the same routes with ``ops.BOUND_LAUNCH`` on and the compiled kernel's launcher stubbed: what a
  replayed launch (:mod:`segquant.kernels.gpu.bound_launch`) costs in Python in place of ``JITFunction.run``.

    python benchmarks/host_python.py [--iters 20000]

Under ``torch.inference_mode`` but for the second dispatch table; the fastest of five blocks of calls. The CPU
differs from the GPU machine's: compare the rows with each other, not with run 20's numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path
from typing import Callable, Optional
from unittest import mock

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's segquant

from segquant.kernels.gpu import ops, triton_gemm, triton_gemv, triton_tma  # noqa: E402

SCHEMA = ("(Tensor a, Tensor b, Tensor a_scale, Tensor? a_scale_neg, Tensor w_scale, Tensor a_col, Tensor w_col, "
          "Tensor? bias, Tensor? lowrank_t, Tensor? lowrank_up, int out_segment, int scale_mode, int k_align, "
          "ScalarType out_dtype) -> Tensor")


def no_op(a, *_) -> Tensor:
    """What each registration runs: an empty new tensor (an op's output may not alias its input)."""
    return a.new_empty(0)


@torch.library.custom_op("segquant_host::as_custom_op", mutates_args=())
def as_custom_op(a: Tensor, b: Tensor, a_scale: Tensor, a_scale_neg: Optional[Tensor], w_scale: Tensor,
                 a_col: Tensor, w_col: Tensor, bias: Optional[Tensor], lowrank_t: Optional[Tensor],
                 lowrank_up: Optional[Tensor], out_segment: int, scale_mode: int, k_align: int,
                 out_dtype: torch.dtype) -> Tensor:
    return no_op(a)


_LIBRARY = torch.library.Library("segquant_host", "FRAGMENT")
_LIBRARY.define("as_defined" + SCHEMA)
_LIBRARY.impl("as_defined", no_op, "CompositeExplicitAutograd")


class StubbedLaunch:
    """Stands in for a Triton kernel: ``kernel[grid](...)`` does nothing."""

    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


def per_call_us(call: Callable[[], object], iters: int, blocks: int = 5) -> float:
    """µs per call: the fastest of ``blocks`` blocks of ``iters / blocks`` calls (the others met interference)."""
    for _ in range(min(200, iters)):
        call()
    size, times = max(1, iters // blocks), []
    for _ in range(blocks):
        started = time.perf_counter()
        for _ in range(size):
            call()
        times.append((time.perf_counter() - started) / size * 1e6)
    return min(times)


def op_args(m: int, k: int, n: int, bias: bool = True) -> tuple:
    """The op's arguments for an INT8 layer ``(1, m, k) x (n, k)``, static per-tensor input scale."""
    return (torch.randint(-8, 8, (1, m, k), dtype=torch.int8), torch.randint(-8, 8, (n, k), dtype=torch.int8),
            torch.ones(1, 1, 1), None, torch.ones(n, 1), torch.zeros(k, dtype=torch.int32),
            torch.zeros(n, dtype=torch.int32), torch.ones(n, dtype=torch.bfloat16) if bias else None, None, None, n,
            0, k, torch.bfloat16)


def dispatch_rows(iters: int) -> list[tuple[str, float]]:
    args = op_args(512, 3072, 3072)
    return [("called directly", per_call_us(lambda: no_op(*args), iters)),
            ("torch.library.custom_op", per_call_us(lambda: torch.ops.segquant_host.as_custom_op(*args), iters)),
            ("torch.library.define / impl", per_call_us(lambda: torch.ops.segquant_host.as_defined(*args), iters))]


def wrapper_rows(iters: int, stub: bool = True) -> list[tuple[str, float]]:
    """Each route's Python with its kernel stubbed (``stub``: launched as Triton's own, ``BOUND_LAUNCH`` off; else as
    it is patched), on run 20's shapes (tiled: ctx_proj; TMA: qkv_fused's K and N at M = 512, so that the CPU's
    allocation of the output does not dominate; GEMV: adaln_plain)."""
    tiled, tma, gemv = op_args(512, 3072, 3072), op_args(512, 3072, 9216), op_args(1, 3072, 18432)
    with contextlib.ExitStack() as stack:
        if stub:
            stack.enter_context(_stubbed({module: StubbedLaunch() for module, _ in _KERNELS}))
            stack.enter_context(ops.switched(BOUND_LAUNCH=False))
        return [("tiled (ctx_proj, M = 512)", per_call_us(lambda: triton_gemm.scaled_gemm_triton(*tiled), iters)),
                ("persistent TMA (qkv_fused's K and N, M = 512)", per_call_us(
                    lambda: triton_tma.tma_gemm_triton(*tma[:3], *tma[4:10], tma[13]), iters)),
                ("GEMV (adaln_plain, M = 1)", per_call_us(
                    lambda: triton_gemv.gemv_triton(*gemv[:5], *gemv[6:11], gemv[12], gemv[13]), iters))]


class ReplayedLaunch:
    """Stands in for an autotuned Triton kernel under ``ops.BOUND_LAUNCH``: its one launch through "Triton" binds the
    arguments by the real kernel's parameter names with its first config (whose pre-hook the replays run, as the TMA
    kernel's), and the compiled kernel's launcher it returns does nothing."""

    function, packed_metadata = None, None

    def __init__(self, autotuner):
        self.arg_names, self.best_config = autotuner.arg_names, autotuner.configs[0]

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            grid({**dict(zip(self.arg_names, args)), **kwargs, **self.best_config.kwargs})
            return self
        return launch

    def run(self, *args) -> None:
        return None


def replay_rows(iters: int) -> list[tuple[str, float]]:
    """:func:`wrapper_rows` with ``BOUND_LAUNCH`` on: each route's Python, the launch key, the replay (the device and
    stream lookups stubbed, as the CPU has none) and, for the TMA kernel, its config's pre-hook, around a launcher
    that does nothing. Less :func:`wrapper_rows`, the replay's own cost, which takes the place of Triton's
    ``JITFunction.run``."""
    from segquant.kernels.gpu import bound_launch

    kernels = {module: ReplayedLaunch(getattr(module, name)) for module, name in _KERNELS}
    with ops.switched(BOUND_LAUNCH=True), mock.patch.object(bound_launch, "_current_device", lambda: 0), \
            mock.patch.object(bound_launch, "_current_stream", lambda device: 0), _stubbed(kernels):
        bound_launch.clear_bound_launches()
        rows = [(f"{name}, replayed", us) for name, us in wrapper_rows(iters, stub=False)]
        bound_launch.clear_bound_launches()
    return rows


_KERNELS = ((triton_gemm, "_scaled_gemm_kernel"), (triton_tma, "_tma_gemm_kernel"), (triton_gemv, "_gemv_kernel"))


def _stubbed(kernels: dict):
    """The routes' kernels replaced by ``kernels`` (module -> stand-in) for a block."""
    stack = contextlib.ExitStack()
    for module, name in _KERNELS:
        stack.enter_context(mock.patch.object(module, name, kernels[module]))
    return stack


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=20000)
    args = parser.parse_args()
    with torch.no_grad():
        no_grad_dispatch = dispatch_rows(args.iters)
    with torch.inference_mode():
        tables = {"dispatch of the op's schema (a no-op)": dispatch_rows(args.iters),
                  "the same under torch.no_grad": no_grad_dispatch,
                  "a Triton route's own Python, its launch stubbed": wrapper_rows(args.iters),
                  "the same with the launch replayed (BOUND_LAUNCH), the launcher stubbed": replay_rows(args.iters)}
    print(f"torch {torch.__version__}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {args.iters} calls each")
    for title, rows in tables.items():
        print(f"\n| {title} | µs per call |\n| --- | --- |")
        for name, us in rows:
            print(f"| {name} | {us:.1f} |")


if __name__ == "__main__":
    main()
