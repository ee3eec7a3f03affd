"""The Triton scaled-GEMM kernel itself, run by Triton's CPU interpreter against its pure-torch twin (skipped
where Triton is not installed). The index math of every variant is checked on any machine; speed and the
compiled kernel are the GPU tests' business (``test_gpu_w8a8.py``)."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.kernels.interpret_triton_gemm import ALL_CASES, exact_integer_case

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs Triton")
ROOT = Path(__file__).resolve().parents[2]


def test_interpreted_kernel_matches_twin_on_every_variant():
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(ROOT))
    run = subprocess.run([sys.executable, str(ROOT / "tests/kernels/interpret_triton_gemm.py")], env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = [line.split() for line in run.stdout.splitlines()]
    results = {name: (float(err), equal == "True") for name, err, equal, _ in lines}
    assert set(results) == set(ALL_CASES)
    assert all(err <= 1e-5 for err, _ in results.values()), results  # accumulation order only
    integer = [name for name in results if exact_integer_case(name)]
    assert len(integer) >= 8 and all(results[name][1] for name in integer), results  # INT8 x INT8: bitwise
    stored_by_tma = {name for name, *_, stored in lines if stored not in ("0", "-")}
    assert stored_by_tma == {name for name in ALL_CASES if "store" in name and "unaligned" not in name}, stored_by_tma



def test_interpreted_fp8_emulation_kernel_equals_the_torch_model():
    """The tensor-core FP8 model's Triton kernel against its pure-torch loop, bitwise, on odd sizes, fast and
    promoted accumulation, other groups and fraction bits, and codes over the whole E4M3 range."""
    from tests.kernels.interpret_fp8_emulation import CASES

    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(ROOT))
    run = subprocess.run([sys.executable, str(ROOT / "tests/kernels/interpret_fp8_emulation.py")], env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert dict(line.split() for line in run.stdout.splitlines()) == {name: "True" for name in CASES}


def test_interpreted_ops_offers_every_tail_mode_each_equal_to_the_twin():
    """``ops.gemm_kernels`` on a layer whose last wave splits both ways offers the tiled kernel and the persistent
    kernel with whole tiles, the K split and the halves along N, each launched with its own ``split_tail`` (a
    closure that bound the wrong mode would show here, not in the outputs: INT8 is the same bits in every mode)."""
    import json

    from segquant.kernels.gpu.triton_tma import HALVES_N, SPLIT_K, WHOLE_TILES

    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(ROOT))
    run = subprocess.run([sys.executable, str(ROOT / "tests/kernels/interpret_triton_gemm.py"), "--ops",
                          "tma_halves_int8_waves_and_tail"], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    name, offered = run.stdout.split(maxsplit=1)
    assert json.loads(offered) == {"tiled": [-1, True], "tma": [WHOLE_TILES, True], "tma_split_tail": [SPLIT_K, True],
                                   "tma_halves_tail": [HALVES_N, True]}


def test_interpreted_kernels_match_twin_on_random_shapes():
    """90 random shapes (seed 0) within what the GPU backend sends the kernels: the persistent kernel in every tail
    mode over 3-13 programs and random tile configs, the tiled kernel and the GEMV with segments, DualScale, INT4
    weights, 16-bit inputs and low-rank branches. Every output within float32 summation order of the twin, INT8 x
    INT8 bitwise; both tail splits run on some shape. ``interpret_triton_gemm.py --sweep COUNT SEED`` draws more."""
    import json

    from segquant.kernels.gpu.triton_tma import HALVES_N, SPLIT_K

    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(ROOT))
    run = subprocess.run([sys.executable, str(ROOT / "tests/kernels/interpret_triton_gemm.py"), "--sweep", "90", "0"],
                         env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = [line.split(maxsplit=4) for line in run.stdout.splitlines()]
    assert len(rows) == 90
    failed = [(name, err, spec) for name, err, equal, exact, spec in rows
              if float(err) > 1e-5 or (exact == "True" and equal != "True")]
    assert not failed, failed
    specs = [json.loads(spec) for *_, spec in rows]
    assert {spec["kernel"] for spec in specs} == {"persistent", "tiled", "gemv"}
    assert {SPLIT_K, HALVES_N} <= {spec.get("split_tail") for spec in specs}
    assert sum(exact == "True" for *_, exact, _ in rows) >= 10
