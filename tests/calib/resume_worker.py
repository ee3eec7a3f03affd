"""Subprocess worker of test_resume_across_processes: record a tiny SD3 calibration set into a dump folder,
optionally SIGKILLing itself at the N-th denoiser call. Usage: resume_worker.py DUMP_PATH [KILL_AT_CALL]."""

import os
import signal
import sys

from segquant.calib import UniformSampler, generate_calibrate_set
from segquant.models.tiny_pipelines import build_tiny_pipeline, tiny_prompt_inputs

PROMPTS = ["a red fox", "a blue car", "an old tree", "a small boat"]
SAMPLER = UniformSampler(max_timestep=6, sample_size=4, timestep_per_sample=3)
CHUNK_SIZE = 3


def run(pipe, dump_path=None):
    items = [tiny_prompt_inputs("sd3", p) for p in PROMPTS]
    return generate_calibrate_set(pipe, SAMPLER, items, "transformer", dump_path=dump_path, chunk_size=CHUNK_SIZE,
                                  guidance_scale=2.0, progress=False)


def main(dump_path: str, kill_at: int = 0) -> None:
    pipe = build_tiny_pipeline("sd3")
    if kill_at:
        calls = []

        def kill(*_):
            calls.append(1)
            if len(calls) == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

        pipe.transformer.register_forward_hook(kill)
    print(len(run(pipe, dump_path)))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 0)
