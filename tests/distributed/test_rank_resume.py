"""A rank that dies while recording a calibration set under torchrun leaves the other ranks' parts
intact, and a rerun records only what is missing (rank_resume_worker.py, gloo, 2 processes)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("diffusers")

from segquant.calib import load_calibrate_set  # noqa: E402
from segquant.calib.storage import read_manifest  # noqa: E402
from segquant.models.tiny_pipelines import build_tiny_pipeline  # noqa: E402
from same import assert_same_sets  # noqa: E402

WORKER = Path(__file__).with_name("rank_resume_worker.py")
ROOT = Path(__file__).parents[2]


def _torchrun(dump: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(WORKER), str(dump), *extra]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def test_dead_rank_keeps_the_others_and_a_rerun_completes_only_what_is_missing(tmp_path):
    from rank_resume_worker import record

    dump = tmp_path / "calib"
    died = _torchrun(dump, "kill")
    assert died.returncode != 0
    assert read_manifest(dump / "rank-00000")["status"] == "complete"
    partial = read_manifest(dump / "rank-00001")
    assert partial["status"] == "incomplete" and [p["id"] for p in partial["prompts"]] == [3]
    assert read_manifest(dump) is None  # no merged index before every rank is done

    rerun = _torchrun(dump)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    calls = [int((tmp_path / f"calls-{rank}.txt").read_text()) for rank in range(2)]
    assert calls == [0, 1]  # rank 0 was complete; rank 1 re-ran only its unfinished prompt
    assert_same_sets(load_calibrate_set(dump), record(build_tiny_pipeline("sd3")))
