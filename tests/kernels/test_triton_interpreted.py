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
