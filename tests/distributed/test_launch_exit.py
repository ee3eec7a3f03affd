"""When launch() exits, the gloo process group is gone with its threads, even when torch._dynamo was first
imported inside the launched run (launch_exit_worker.py, 2 processes). A group that outlived
destroy_process_group let a gloo worker abort the finished process at interpreter shutdown."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("launch_exit_worker.py")
ROOT = Path(__file__).parents[2]


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads thread names from Linux /proc")
def test_no_gloo_thread_outlives_launch(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(WORKER),
           str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in range(2):
        threads = json.loads((tmp_path / f"threads-{rank}.json").read_text())
        assert [name for name in threads["inside"] if "gloo" in name], threads  # the group's threads are named
        assert not [name for name in threads["after"] if "gloo" in name], (rank, threads)
