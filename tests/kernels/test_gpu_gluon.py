"""The Gluon INT8 kernels for Hopper (:mod:`segquant.kernels.gpu.gluon_wgmma`) against the pure-torch twin, bitwise,
on an sm_90 GPU. A file of their own, run last by ``benchmarks/gpu_session.sh tests``: kernels that wait on barriers
can hang if wrong, and the other GPU tests should have reported by then. Their build (SASS: an MMA kept in flight, no
spills) is checked on the CPU in ``test_hopper_lowering.py``."""

import pytest
import torch

from segquant.enums import DType
from segquant.kernels.gpu import ops
from tests.kernels.interpret_triton_gemm import case as interpreted_case
from tests.kernels.interpret_triton_gemm import one_input_scale
from tests.kernels.test_gpu_w8a8 import (TMA_GPU_CASES, TMA_SPLIT_GPU_CASES, assert_matches_twin, op_case,
                                         poison_allocator)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] != 9,
                                reason="needs an sm_90 GPU (wgmma)")


def count_launches(kernel, monkeypatch) -> list:
    """A list that grows by one at each launch of the autotuned ``kernel`` (its cache stays empty with one config)."""
    launches = []
    run = kernel.run
    monkeypatch.setattr(kernel, "run", lambda *a, **kw: launches.append(1) or run(*a, **kw))
    return launches


#: The Gluon kernel's cases: the persistent kernel's INT8 ones without the low-rank branch (tails in M, N and K, a K
#: block read in place, FLUX's ff_up and out_proj, more tiles than programs and fewer); the small ones in every tile
#: config, FLUX's in the first (the widest tiles). ``TILE_SCALED_CONFIGS``: the per-K-tile kernel's configs by K tile.
GLUON_CONFIGS = 7
TILE_SCALED_CONFIGS = {128: (0, 1, 2), 64: (3,)}
WGMMA_CASES = {name: spec for name, spec in {**TMA_GPU_CASES, **TMA_SPLIT_GPU_CASES}.items()
               if spec["fmt"] == "int8" and not spec.get("rank")}
WGMMA_RUNS = [(name, config) for name, spec in WGMMA_CASES.items()
              for config in (range(GLUON_CONFIGS) if spec["m"] * spec["n"] < 2 ** 20 else (0,))]


@pytest.mark.parametrize("name,config", WGMMA_RUNS)
def test_gluon_kernel_matches_twin(name, config, monkeypatch):
    """``ops.gemm`` with the Gluon INT8 kernel chosen, in each of its tile configs (autotuning is off in the tests),
    equals the twin bitwise, also when called again."""
    from segquant.kernels.gpu import gluon_wgmma

    kernel = gluon_wgmma._wgmma_gemm_kernel
    assert len(gluon_wgmma._CONFIGS) == GLUON_CONFIGS
    monkeypatch.setitem(ops.USE_WGMMA, "enabled", True)
    monkeypatch.setattr(ops, "fastest_kernel", lambda key, kernels, **_: "wgmma")
    monkeypatch.setattr(kernel, "configs", [gluon_wgmma._CONFIGS[config]])
    launches = count_launches(kernel, monkeypatch)
    spec = {k: v for k, v in WGMMA_CASES[name].items() if k != "tile"}
    op_args = interpreted_case(**spec)
    op_args = op_args if "block" in spec else one_input_scale(op_args)
    args = [t.cuda() if isinstance(t, torch.Tensor) else t for t in op_args]
    for _ in range(2):
        poison_allocator()
        y = ops.gemm(*args[:-1], torch.bfloat16)
        assert_matches_twin(y, args)
    assert len(launches) == 2


#: Per-head input scales over per-channel weights (``scale_mode`` 1), on the Gluon per-K-tile kernel: FLUX's attention
#: output projection (24 heads of 128, per-token scales), SD3.5's (heads of 64, one static scale per head), and tails
#: in M, N and K (a last head of 112 channels). ``(m, n, head widths, per-token scales)``.
TILE_SCALED_CASES = {"flux_heads": (4608, 3072, (128,) * 24, True),
                     "sd35_heads_static": (2048, 1536, (64,) * 24, False),
                     "tails": (333, 200, (128,) * 7 + (112,), True)}


def tile_scaled_case(m, n, heads, rows):
    args = op_case(DType.INT8, m, n, sum(heads), segments=heads, rows=rows)
    return dict(args, w_scale=args["w_scale"][:, :1].contiguous(), w_col=torch.zeros_like(args["w_col"]),
                scale_mode=1)


@pytest.mark.parametrize("name,config", [(name, config) for name, (_, _, heads, _) in TILE_SCALED_CASES.items()
                                         for config in TILE_SCALED_CONFIGS[heads[0]]])
def test_gluon_tile_scaled_kernel_matches_twin(name, config, monkeypatch):
    """``ops.gemm`` with the Gluon per-K-tile kernel chosen, in each of its configs for the layer's scale tile,
    equals the twin bitwise, also when called again."""
    from segquant.kernels.gpu import gluon_wgmma

    kernel = gluon_wgmma._wgmma_tile_scaled_kernel
    assert [c.kwargs["BK"] for c in gluon_wgmma._TILE_SCALED_CONFIGS] == [128, 128, 128, 64]
    monkeypatch.setitem(ops.USE_WGMMA, "enabled", True)
    monkeypatch.setattr(ops, "fastest_kernel", lambda key, kernels, **_: "wgmma_tile_scaled")
    monkeypatch.setattr(kernel, "configs", [gluon_wgmma._TILE_SCALED_CONFIGS[config]])
    launches = count_launches(kernel, monkeypatch)
    args = tile_scaled_case(*TILE_SCALED_CASES[name])
    assert gluon_wgmma.tile_scaled_fits(args["a"], args["b"], args["a_scale"], None, None, 1, args["k_align"])
    for _ in range(2):
        poison_allocator()
        y = ops.gemm(**args, out_dtype=torch.bfloat16)
        assert_matches_twin(y, args)
    assert len(launches) == 2


#: DualScale layers (``(m, n, k, per-token scales)``): FLUX's FFN down-projection, tails in M and N, and a K that is not
#: a multiple of the K tile (the positive side's last tile must read zeros past K, not the negative side's codes).
DUAL_CASES = {"flux_ff_down": (4608, 3072, 12288, False), "tails": (333, 200, 1024, True),
              "k_tail": (300, 136, 1040, True)}


@pytest.mark.parametrize("name,config", [(name, config) for name in DUAL_CASES for config in (0, 1)])
def test_gluon_dual_kernel_matches_twin(name, config, monkeypatch):
    """``ops.gemm`` with the Gluon kernel chosen for a DualScale layer (both products of a weight tile in flight), in
    each of its configs, equals the twin bitwise, also when called again."""
    from segquant.kernels.gpu import gluon_wgmma

    kernel = gluon_wgmma._wgmma_dual_kernel
    monkeypatch.setitem(ops.USE_WGMMA, "enabled", True)
    monkeypatch.setattr(ops, "fastest_kernel", lambda key, kernels, **_: "wgmma")
    monkeypatch.setattr(kernel, "configs", [gluon_wgmma._DUAL_CONFIGS[config]])
    launches = count_launches(kernel, monkeypatch)
    m, n, k, rows = DUAL_CASES[name]
    args = op_case(DType.INT8, m, n, k, dual=True, rows=rows)
    assert gluon_wgmma.dual_fits(args["a"], args["b"], args["a_scale_neg"], None, 0, False)
    for _ in range(2):
        poison_allocator()
        y = ops.gemm(**args, out_dtype=torch.bfloat16)
        assert_matches_twin(y, args)
    assert len(launches) == 2
