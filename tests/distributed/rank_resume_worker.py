"""Worker of test_rank_resume.py, run under ``torchrun --nproc-per-node 2``: record a tiny SD3 calibration
set (5 prompts: rank 0 gets 3, rank 1 gets 2) into DUMP_PATH and write each rank's number of pipeline
calls to DUMP_PATH/../calls-<rank>.txt.

Usage: rank_resume_worker.py DUMP_PATH [kill]. With ``kill``, rank 1 SIGKILLs itself once rank 0's
folder is complete and its own folder has stored its first prompt (so it dies halfway, leaving rank 0
done and its own part resumable).
"""

import os
import signal
import sys
import time
from pathlib import Path

import torch

from segquant.calib import UniformSampler, generate_calibrate_set
from segquant.calib.sharded import rank_folder
from segquant.calib.storage import read_manifest
from segquant.distributed import launch
from segquant.models.tiny_pipelines import build_tiny_pipeline, tiny_prompt_inputs

PROMPTS = ["a red fox", "a blue car", "an old tree", "a small boat", "a green hat"]
SAMPLER = UniformSampler(max_timestep=4, sample_size=5, timestep_per_sample=2)


def record(pipe, dump_path=None):
    items = [tiny_prompt_inputs("sd3", p) for p in PROMPTS]
    return generate_calibrate_set(pipe, SAMPLER, items, "transformer", dump_path=dump_path, chunk_size=1,
                                  guidance_scale=2.0, progress=False)


def _die_halfway(dump: Path):
    def hook(*_):
        own = read_manifest(rank_folder(dump, 1))
        if own is None or not own["prompts"]:
            return
        for _ in range(600):  # wait (at most 60 s) until rank 0 is done
            rank0 = read_manifest(rank_folder(dump, 0))
            if rank0 is not None and rank0["status"] == "complete":
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(0.1)

    return hook


def main(dump: Path, kill: bool) -> None:
    torch.set_num_threads(1)
    with launch("cpu") as (world, _device):
        pipe = build_tiny_pipeline("sd3")
        calls, set_timesteps = [], pipe.scheduler.set_timesteps
        pipe.scheduler.set_timesteps = lambda *a, **k: calls.append(1) or set_timesteps(*a, **k)
        if kill and world.rank == 1:
            pipe.transformer.register_forward_pre_hook(_die_halfway(dump))
        record(pipe, dump)
        (dump.parent / f"calls-{world.rank}.txt").write_text(str(len(calls)))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:] == ["kill"])
