"""The kernels compiled for Hopper (sm_90) on a machine without a GPU: Triton lowers them to PTX and its bundled
``ptxas`` assembles them, which the CPU interpreter does not check (tensor descriptors, wgmma, the split tail's
atomics, and which float32 instructions the INT8 epilogues use). Numerics are the interpreter's and the GPU tests'
business."""

import itertools
import re

import pytest

triton = pytest.importorskip("triton")

from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from segquant.kernels.gpu.triton_tma import HALVES_N, SPLIT_K, WHOLE_TILES  # noqa: E402

POINTERS = dict(c_ptr="*bf16", as_ptr="*fp32", ws_ptr="*fp32", acol_ptr="*i32", wcol_ptr="*i32", bias_ptr="*bf16",
                t_ptr="*bf16", u_ptr="*bf16", count_ptr="*i32")


#: Shared memory a block may use on an H100 / H200 (227 KB).
HOPPER_SHARED_BYTES = 232448


def hopper_build(is_int: bool, split_tail: int, has_lr: bool, config=None, fp_fusion: bool = True):
    """``_tma_gemm_kernel`` compiled for sm_90 with ``config`` (default: the first, FLUX's largest tiles, 128 x 256 x
    128, 8 warps, 3 stages)."""
    from segquant.kernels.gpu.triton_tma import _CONFIGS, _tma_gemm_kernel, store_block

    config = config or _CONFIGS[0]
    bm, bn, bk = config.kwargs["BM"], config.kwargs["BN"], config.kwargs["BK"]
    kernel = _tma_gemm_kernel.fn  # the JITFunction under the autotuner
    code = "i8" if is_int else "fp8e4nv"
    constants = dict(NUM_SMS=132, IS_INT=is_int, HAS_BIAS=True, HAS_LR=has_lr, R=32, SPLIT_TAIL=split_tail,
                     **config.kwargs)
    signature = {name: "i32" for name in kernel.arg_names}
    signature.update(POINTERS, a_desc=f"tensordesc<{code}[{bm}, {bk}]>", b_desc=f"tensordesc<{code}[{bn}, {bk}]>",
                     bh_desc=f"tensordesc<{code}[{bn // 2}, {bk}]>",
                     c_desc="tensordesc<bf16[{}, {}]>".format(*store_block(bm, bn, config.kwargs["STORE_TMA"])),
                     partial_ptr="*i32" if is_int else "*fp32", **{name: "constexpr" for name in constants})
    source = ASTSource(fn=kernel, signature=signature,
                       constexprs={(kernel.arg_names.index(name),): value for name, value in constants.items()})
    return compiled(source, config.num_warps, config.num_stages, fp_fusion)


def compiled(source, num_warps: int, num_stages: int, fp_fusion: bool):
    options = dict(num_warps=num_warps, num_stages=num_stages, enable_fp_fusion=fp_fusion)
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)


def build_under_heuristics(kernel, pointers: dict, constants: dict, fp_fusion: bool, num_warps: int = 4):
    """A kernel under ``@autotune`` and ``@heuristics`` compiled for sm_90 with the pointer types and constexprs."""
    fn = kernel.fn.fn
    signature = {name: "i32" for name in fn.arg_names}
    signature.update(pointers, **{name: "constexpr" for name in constants})
    source = ASTSource(fn=fn, signature=signature,
                       constexprs={(fn.arg_names.index(name),): value for name, value in constants.items()})
    return compiled(source, num_warps, 3, fp_fusion)


def int8_tiled_build(fp_fusion: bool):
    """The tiled kernel, INT8 with DualScale and per-K-tile scales (the most float32 steps per output element)."""
    from segquant.kernels.gpu.triton_gemm import _scaled_gemm_kernel

    pointers = dict(a_ptr="*i8", b_ptr="*i8", asn_ptr="*fp32",
                    **{k: v for k, v in POINTERS.items() if k != "count_ptr"})
    constants = dict(MODE=2, DUAL=True, HAS_BIAS=True, HAS_LR=False, R=16, IS_INT=True, W4=False, A_KIND=0,
                     TILE_SCALE=True, BM=128, BN=128, BK=64, GROUP_M=8, EVEN_K=True, ONE_GROUP=True)
    return build_under_heuristics(_scaled_gemm_kernel, pointers, constants, fp_fusion)


def int8_gemv_build(fp_fusion: bool):
    """The GEMV on ``dp4a`` words with DualScale."""
    from segquant.kernels.gpu.triton_gemv import _gemv_kernel

    pointers = dict(a_ptr="*i32", b_ptr="*i32", asn_ptr="*fp32", **{k: v for k, v in POINTERS.items()
                                                                    if k not in ("count_ptr", "acol_ptr")})
    constants = dict(W4=False, DUAL=True, HAS_BIAS=True, HAS_LR=False, R=16, A_KIND=0, DP4A=True, BN=16, BK=256,
                     CHUNK=256)
    return build_under_heuristics(_gemv_kernel, pointers, constants, fp_fusion)


def test_int8_epilogues_round_every_float32_step():
    """INT8 launches pass ``enable_fp_fusion=False``: each multiply and add of the epilogue rounds on its own
    (``mul.rn`` / ``add.rn``, which ptxas does not contract), as in the twin, so the GPU equals it bitwise; with
    fusion the same kernels multiply-add in one rounding (the check can fail)."""
    tails = [lambda fusion, split=split: hopper_build(True, split, False, fp_fusion=fusion)
             for split in (SPLIT_K, HALVES_N)]
    for build in (int8_tiled_build, int8_gemv_build, *tails):
        assert "fma.rn.f32" not in build(False).asm["ptx"]
    assert "fma.rn.f32" in int8_tiled_build(True).asm["ptx"]


def test_int8_per_k_tile_path_converts_its_sums_without_the_conversion_unit():
    """Each K tile's int32 sum becomes float32 through the mantissa (``triton_gemm._small_int_to_float``; Triton folds
    the integer add into the accumulator's initial value), not ``cvt.rn.f32.s32``, which runs at a quarter or less of
    the float add's rate; the constant-scale path converts its one full sum as before."""
    ptx = int8_tiled_build(False).asm["ptx"]
    assert "cvt.rn.f32.s32" not in ptx and "0fCB400000" in ptx  # the subtraction of 1.5 · 2^23
    assert "cvt.rn.f32.s32" in hopper_build(True, WHOLE_TILES, False, fp_fusion=False).asm["ptx"]


@pytest.mark.parametrize("is_int,split_tail,has_lr",
                         [(True, WHOLE_TILES, False), (True, SPLIT_K, False), (False, SPLIT_K, True),
                          (True, HALVES_N, False), (False, HALVES_N, True)])
def test_tma_kernel_lowers_to_wgmma_with_an_ordered_tail_count(is_int, split_tail, has_lr):
    """Tensor cores fed by TMA in every tail mode; the K split's pieces publish their partials before counting in,
    the halves along N have nothing to publish."""
    ptx = hopper_build(is_int, split_tail, has_lr).asm["ptx"]
    assert "wgmma.mma_async" in ptx and "cp.async.bulk.tensor" in ptx
    assert ("atom.global.gpu.acq_rel.add" in ptx) == (split_tail == SPLIT_K)


def test_every_tma_config_fits_hoppers_shared_memory(monkeypatch):
    """Each config, with either split tail, in the shared memory of one block (the epilogue's staging tile too); those
    with ``STORE_TMA`` store by TMA, the others through pointers. With a rank-32 low-rank branch, each config that
    ``sized_configs`` keeps fits too, and those it leaves out (the TMA stores) do not."""
    from segquant.kernels.gpu.triton_tma import _CONFIGS, sized_configs

    assert any(config.kwargs["STORE_TMA"] for config in _CONFIGS)
    for config, is_int, split in itertools.product(_CONFIGS, (True, False), (SPLIT_K, HALVES_N)):
        kernel = hopper_build(is_int, split, False, config)
        assert kernel.metadata.shared <= HOPPER_SHARED_BYTES, (config, is_int, split, kernel.metadata.shared)
        stores_by_tma = re.search(r"cp\.async\.bulk\.tensor\.2d\.global\.shared", kernel.asm["ptx"]) is not None
        assert stores_by_tma == bool(config.kwargs["STORE_TMA"]), config
    monkeypatch.delenv("SEGQUANT_TRITON_AUTOTUNE", raising=False)  # every config kept, not the first
    launch = {"M": 4608, "c_desc": object()}
    with_lowrank = sized_configs(_CONFIGS, dict(launch, HAS_LR=True))
    for config in sized_configs(_CONFIGS, dict(launch, HAS_LR=False)):
        fits = hopper_build(True, WHOLE_TILES, True, config).metadata.shared <= HOPPER_SHARED_BYTES
        assert fits == (config in with_lowrank), config


def gluon_build(kernel, config, code: str = "i8", **constants) -> "triton.compiler.CompiledKernel":
    """A Gluon kernel (of :mod:`segquant.kernels.gpu.gluon_wgmma`, or ``benchmarks/gemm_ceiling.py``'s) compiled for
    sm_90 with ``config`` (and the kernel's own ``constants``), as launched: codes of type ``code`` (``"i8"`` or
    ``"fp8e4nv"``), bias, no fused multiply-adds, pointers and strides specialized as multiples of 16."""
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon._runtime import GluonASTSource
    from triton.runtime.autotuner import Autotuner

    fn = kernel.fn if isinstance(kernel, Autotuner) else kernel  # the GluonJITFunction
    element = {"i8": gl.int8, "fp8e4nv": gl.float8e4nv}[code]
    signature = {name: "i32" for name in fn.arg_names}
    rows = {"a_desc": config.kwargs["BM"], "an_desc": config.kwargs["BM"], "b_desc": config.kwargs["BN"]}
    for name, rows in rows.items():
        block = [rows, config.kwargs["BK"]]
        layout = gl.NVMMASharedLayout.get_default_for(block, element)
        signature[name] = f"tensordesc<{code}[{block[0]}, {block[1]}],{layout!r}>"
    signature.update(POINTERS, asn_ptr="*fp32")
    constants = dict(NUM_SMS=132, HAS_BIAS=True, **constants, **config.kwargs)
    signature.update({name: "constexpr" for name in constants})
    signature = {name: signature[name] for name in fn.arg_names}
    constants = {name: value for name, value in constants.items() if name in fn.arg_names}
    aligned = [i for i, name in enumerate(fn.arg_names) if name.endswith("_ptr") or name.startswith("stride")
               or name in ("N", "K")]
    source = GluonASTSource(fn=fn, signature=signature, attrs={(i,): [["tt.divisibility", 16]] for i in aligned},
                            constexprs={(fn.arg_names.index(name),): value for name, value in constants.items()})
    return compiled(source, config.num_warps, config.num_stages, fp_fusion=False)


def ptxas_report(ptx: str) -> str:
    """``ptxas -v`` on ``ptx`` for sm_90a with Triton's bundled ptxas: its info lines (registers, spills, and the
    waits it inserts on its own)."""
    import subprocess
    import tempfile
    from pathlib import Path

    from triton.backends.nvidia.compiler import get_ptxas

    ptxas = get_ptxas(90)
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "kernel.ptx"
        source.write_text(ptx)
        run = subprocess.run([getattr(ptxas, "path", ptxas), "-v", "--gpu-name=sm_90a", str(source), "-o",
                              str(Path(folder) / "kernel.o")], capture_output=True, text=True, check=True)
    return run.stdout + run.stderr


def gluon_module():
    return pytest.importorskip("segquant.kernels.gpu.gluon_wgmma", reason="this Triton has no Gluon for Hopper")


def mma_sequence(kernel) -> list[str]:
    """The kernel's SASS (Triton's bundled ``nvdisasm``) reduced to its tensor-core ops in order: ``MMA`` (an
    ``IGMMA`` / ``HGMMA`` / ``QGMMA``: INT8 / 16-bit / FP8), ``WAIT<n>`` (``WARPGROUP.DEPBAR.LE gsb0, n``: wait until at
    most ``n`` MMA groups are in flight) and ``SPILL`` (``STL`` / ``LDL``)."""
    import os
    import subprocess
    import tempfile
    from pathlib import Path

    nvdisasm = Path(os.path.dirname(triton.__file__)) / "backends/nvidia/bin/nvdisasm"
    with tempfile.TemporaryDirectory() as folder:
        cubin = Path(folder) / "kernel.cubin"
        cubin.write_bytes(kernel.asm["cubin"])
        sass = subprocess.run([str(nvdisasm), "-c", str(cubin)], capture_output=True, text=True, check=True).stdout
    names = {"IGMMA": "MMA", "HGMMA": "MMA", "QGMMA": "MMA", "STL": "SPILL", "LDL": "SPILL"}
    ops = re.findall(r"\b(IGMMA|HGMMA|QGMMA|STL|LDL)\b|WARPGROUP\.DEPBAR\.LE gsb0, 0x(\d)", sass)
    return [names[op] if op else f"WAIT{depth}" for op, depth in ops]


def pipelined(sequence: list[str]) -> bool:
    """MMA groups waited with ``WAIT1`` or ``WAIT2`` (the next ones in flight), and no MMA waited for on its own: ptxas
    serializes every MMA (``MMA WAIT0 MMA WAIT0 ...``) where it cannot prove that the registers of an MMA in flight
    are left alone, which it reports as a wait it "injected" only for the first."""
    serialized = any(a == "MMA" and b == "WAIT0" and c == "MMA" for a, b, c in zip(sequence, sequence[1:],
                                                                                  sequence[2:]))
    return ("WAIT1" in sequence or "WAIT2" in sequence) and not serialized and "SPILL" not in sequence


def test_gluon_int8_kernel_keeps_a_wgmma_in_flight_in_every_config():
    """The reason the Gluon kernel exists: one INT8 MMA stays in flight (``wait 1`` in the SASS) where Triton's own
    INT8 loop waits for every step (checked too, so that the comparison stays honest); without spills (the
    accumulator and the epilogue's scale vectors in registers), in Hopper's shared memory, and without fused
    multiply-adds in the epilogue (bitwise equal to the twin)."""
    gluon = gluon_module()
    builds = [(config, False) for config in gluon._CONFIGS] + [(config, True) for config in gluon._DUAL_CONFIGS]
    for config, dual in builds:
        kernel = gluon_build(gluon._wgmma_gemm_kernel, config, DUAL=dual)
        ptx = kernel.asm["ptx"]
        assert "cp.async.bulk.tensor" in ptx and "fma.rn.f32" not in ptx, config
        assert kernel.metadata.shared <= HOPPER_SHARED_BYTES, (config, kernel.metadata.shared)
        assert pipelined(mma_sequence(kernel)), (config, mma_sequence(kernel))
        assert " 0 bytes spill stores" in ptxas_report(ptx), config
    assert "WAIT1" not in mma_sequence(hopper_build(True, WHOLE_TILES, False, fp_fusion=False))


def test_gluon_tile_scaled_kernel_overlaps_a_rescale_with_the_next_mma():
    """The per-K-tile kernel issues a pair of K tiles' MMAs and rescales the first while the second is in flight
    (``wait 1``), converts without ``cvt.rn.f32.s32`` and multiplies without FMAs, and fits the shared memory and the
    registers (two int32 accumulators and the float32 tile) without spills."""
    gluon = gluon_module()
    for config in gluon._TILE_SCALED_CONFIGS:
        kernel = gluon_build(gluon._wgmma_tile_scaled_kernel, config)
        ptx = kernel.asm["ptx"]
        assert "cp.async.bulk.tensor" in ptx, config
        assert "cvt.rn.f32.s32" not in ptx and "fma.rn.f32" not in ptx, config
        assert kernel.metadata.shared <= HOPPER_SHARED_BYTES, (config, kernel.metadata.shared)
        assert pipelined(mma_sequence(kernel)), (config, mma_sequence(kernel))
        assert " 0 bytes spill stores" in ptxas_report(ptx), config


def test_gpu_time_decomposition_keeps_exactly_the_parts_it_names():
    """``benchmarks/gemm_ceiling.py`` times the Gluon schedule with parts switched off: ``loads`` must issue TMA loads
    and no MMA, and every mode with MMAs must keep them (a dead accumulator would let the compiler drop them) with one
    in flight, in both formats."""
    gluon_module()
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from gemm_ceiling import CODES, MODES, _schedule_kernel

    config = triton.Config({"BM": 128, "BN": 256, "BK": 128, "STAGES": 3, "GROUP_M": 8, "WARPS_N": 2}, num_warps=8,
                           num_stages=1)
    for fmt, (_, code) in CODES.items():
        for mode, (loads, mmas, _) in MODES.items():
            kernel = gluon_build(_schedule_kernel, config, code=code, IS_INT=fmt == "int8", LOADS=loads, MMAS=mmas)
            sequence = mma_sequence(kernel)
            assert "cp.async.bulk.tensor" in kernel.asm["ptx"], (fmt, mode)
            assert (sequence.count("MMA") == 8 and pipelined(sequence)) if mmas else "MMA" not in sequence, (fmt, mode)


@pytest.mark.parametrize(("group", "promote", "product_exponents"), [(16, 8, False), (16, 0, False), (32, 4, True)],
                         ids=["promoted", "fast", "product_exponents_truncated_sums"])
def test_fp8_emulation_kernel_truncates_its_addends_without_spills(group, promote, product_exponents):
    """The tensor-core FP8 model's kernel (``triton_fp8_emulation``): its float32 -> int32 conversions truncate
    (``cvt.rzi``: the model's rounding toward zero), and its 16 × 16 × ``group`` block of products fits the
    registers, with the products' exponent sums and the truncated group sums too."""
    from segquant.kernels.gpu.triton_fp8_emulation import BLOCK, _tensor_core_sum_kernel as kernel, warps_for

    constants = dict(GROUP=group, FRACTION_BITS=13, PROMOTE_GROUPS=promote, PRODUCT_EXPONENTS=product_exponents,
                     TRUNCATE_RESULT=product_exponents, BLOCK_M=BLOCK, BLOCK_N=BLOCK)
    signature = {name: "i32" for name in kernel.arg_names}
    signature.update(a_ptr="*fp16", b_ptr="*fp16", out_ptr="*fp32", **{name: "constexpr" for name in constants})
    source = ASTSource(fn=kernel, signature=signature,
                       constexprs={(kernel.arg_names.index(name),): value for name, value in constants.items()})
    ptx = compiled(source, num_warps=warps_for(group), num_stages=2, fp_fusion=True).asm["ptx"]
    assert "cvt.rzi.s32.f32" in ptx and "cvt.rni.s32.f32" not in ptx
    assert " 0 bytes spill stores" in ptxas_report(ptx)
