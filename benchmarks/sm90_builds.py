"""Shared memory, registers and spills of every persistent-kernel config and Gluon INT8 config, built for sm_90 on any
machine (Triton's compiler and its bundled ``ptxas``; no GPU): what BENCHMARKS.md quotes for the configs.

    PYTHONPATH=. python benchmarks/sm90_builds.py   # build with the Triton the GPU has (3.6 on the lent H200)
"""

from __future__ import annotations

import itertools
import re

from tests.kernels.test_hopper_lowering import HOPPER_SHARED_BYTES, gluon_build, hopper_build, ptxas_report


def described(kernel) -> str:
    """``shared bytes, registers, spilled bytes`` of a compiled kernel."""
    report = ptxas_report(kernel.asm["ptx"])
    registers = re.search(r"Used (\d+) registers", report).group(1)
    spills = re.search(r"(\d+) bytes spill stores", report).group(1)
    return f"{kernel.metadata.shared:>6} B shared, {registers} registers, {spills} B spilled"


def main() -> None:
    import triton

    from segquant.kernels.gpu import gluon_wgmma
    from segquant.kernels.gpu.triton_tma import _CONFIGS, HALVES_N, WHOLE_TILES

    print(f"Triton {triton.__version__}, sm_90, shared memory per block: {HOPPER_SHARED_BYTES} B")
    for config in _CONFIGS:
        kw = config.kwargs
        for is_int, (tail, split) in itertools.product((True, False), (("", WHOLE_TILES), (" halves-tail", HALVES_N))):
            print(f"tma {kw['BM']}x{kw['BN']}x{kw['BK']} s{config.num_stages} tma-store={kw['STORE_TMA']}{tail} "
                  f"{'int8' if is_int else 'fp8 '}: {described(hopper_build(is_int, split, False, config))}")
    for name, kernel, configs, extra in (
            ("gluon", gluon_wgmma._wgmma_gemm_kernel, gluon_wgmma._CONFIGS, {"DUAL": False}),
            ("gluon dual", gluon_wgmma._wgmma_gemm_kernel, gluon_wgmma._DUAL_CONFIGS, {"DUAL": True}),
            ("gluon tile-scaled", gluon_wgmma._wgmma_tile_scaled_kernel, gluon_wgmma._TILE_SCALED_CONFIGS, {})):
        for config in configs:
            kw = config.kwargs
            print(f"{name} {kw['BM']}x{kw['BN']}x{kw['BK']} x{kw['STAGES']}: "
                  f"{described(gluon_build(kernel, config, **extra))}")


if __name__ == "__main__":
    main()
