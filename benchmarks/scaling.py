"""Data-parallel throughput against the number of torchrun processes (issue 16).

Three jobs, each timed on rank 0 between two barriers (process start, imports and model loading are
not counted; the merge/gather that a run needs is). Reported per job: wall time and throughput, and
the CPU seconds of the busiest rank (``time.process_time``): on a machine shared with other jobs the
wall-clock speed-up is capped by the free cores, the CPU split shows how evenly the work is divided.

* ``calib``: ``generate_calibrate_set`` on the tiny SD3 pipeline into a dump folder (records/s);
* ``calibrate``: ``calibrate()`` of the tiny SD3 transformer (w8a8 plan) over that set (batches/s);
* ``eval``: ``harness.generate_images`` with the demo MMDiT (shipped weights, text encoder; images/s).

For each N of ``--nproc`` the script starts itself under ``torchrun --standalone --nproc-per-node N``;
every process runs with ``--threads`` intra-op threads (default 1), so N processes use N cores.
Usage (CPU, ~5 minutes on 2 cores):

    python benchmarks/scaling.py --nproc 1,2,4 --out benchmarks/results/scaling.json
    python benchmarks/scaling.py --nproc 1 --device cuda       # one GPU per process
    python benchmarks/scaling.py --nproc 1 --device cuda --jobs calib,calibrate   # without segquant[demo]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def _timed(step) -> dict:
    """Wall seconds of ``step`` on every rank together, and the CPU seconds of the busiest rank (a measure
    of the work split that a machine shared with other jobs does not distort)."""
    from segquant.distributed import barrier, gather_list

    barrier()
    t0, c0 = time.perf_counter(), time.process_time()
    step()
    cpu = time.process_time() - c0
    barrier()
    return {"seconds": time.perf_counter() - t0, "cpu_s_busiest_rank": max(gather_list([cpu]))}


def _prompts(n: int) -> list[str]:
    from segquant.demo.data import eval_prompts

    return eval_prompts(per_class=-(-n // 10))[0][:n]


def job_calib(args, device, work: Path) -> dict:
    from segquant.calib import UniformSampler, generate_calibrate_set, load_calibrate_set
    from segquant.models.tiny_pipelines import build_tiny_pipeline, tiny_prompt_inputs

    pipe = build_tiny_pipeline("sd3").to(device)
    items = [tiny_prompt_inputs("sd3", p) for p in _prompts(args.prompts)]
    for item in items:
        item.update(height=args.size, width=args.size)
    sampler = UniformSampler(args.steps, len(items), args.steps // 2)
    timing = _timed(lambda: generate_calibrate_set(pipe, sampler, items, "transformer", dump_path=work / "calib",
                                                   guidance_scale=2.0, progress=False, compress=False))
    records = len(load_calibrate_set(work / "calib"))
    return {"job": "calib", **timing, "items": records, "unit": "records", "denoiser": pipe.transformer}


def job_calibrate(args, device, work: Path, denoiser) -> dict:
    from segquant.calib import load_calibrate_set
    from segquant.calibration import calibrate
    from segquant.plan import build_plan

    loader = load_calibrate_set(work / "calib").get_dataloader(batch_size=2)
    plan = build_plan(denoiser, "w8a8", next(iter(loader)))
    timing = _timed(lambda: calibrate(denoiser, plan, loader))
    return {"job": "calibrate", **timing, "items": len(loader), "unit": "batches"}


def job_eval(args, device) -> dict:
    from segquant.demo.pipeline import load_demo_pipeline
    from segquant.eval.harness import EvalConfig, generate_images

    pipe = load_demo_pipeline("mmdit", device=str(device))
    pipe.set_progress_bar_config(disable=True)
    cfg = EvalConfig(prompts=_prompts(args.images), num_inference_steps=args.steps, batch_size=args.batch_size)
    timing = _timed(lambda: generate_images(pipe, cfg, progress=False))
    return {"job": "eval", **timing, "items": len(cfg.prompts), "unit": "images"}


def worker(args) -> None:
    from segquant.distributed import launch

    torch.set_num_threads(args.threads)
    with launch(args.device) as (world, device), tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        calib = job_calib(args, device, work)
        results = [calib, job_calibrate(args, device, work, calib.pop("denoiser"))]
        if "eval" in args.jobs.split(","):
            results.append(job_eval(args, device))
        if world.is_main:
            for r in results:
                r.update(processes=world.size, per_second=r["items"] / r["seconds"])
            Path(args.result).write_text(json.dumps(results))


def launch_all(args) -> list[dict]:
    rows = []
    for n in [int(x) for x in args.nproc.split(",")]:
        with tempfile.TemporaryDirectory() as tmp:
            result = Path(tmp) / "result.json"
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}", __file__,
                   "--worker", "--result", str(result), "--work", tmp, *_job_args(args)]
            env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if proc.returncode:
                raise SystemExit(f"{n} process(es) failed:\n{proc.stderr[-3000:]}")
            rows += json.loads(result.read_text())
            print(f"{n} process(es): " + ", ".join(f"{r['job']} {r['per_second']:.2f} {r['unit']}/s"
                                                   for r in rows if r["processes"] == n), flush=True)
    return rows


def _job_args(args) -> list[str]:
    return [f"--{k.replace('_', '-')}={getattr(args, k)}" for k in
            ("prompts", "images", "steps", "size", "batch_size", "threads", "device", "jobs")]


def table(rows: list[dict]) -> str:
    lines = ["| job | processes | wall s | throughput | speed-up (wall) | CPU s, busiest rank | speed-up (CPU) |",
             "|---|---|---|---|---|---|---|"]
    base = {r["job"]: r for r in rows if r["processes"] == 1}
    for r in sorted(rows, key=lambda r: (r["job"], r["processes"])):
        b = base.get(r["job"])
        wall = f"{r['per_second'] / b['per_second']:.2f}x" if b else "—"
        cpu = f"{b['cpu_s_busiest_rank'] / r['cpu_s_busiest_rank']:.2f}x" if b else "—"
        lines.append(f"| {r['job']} | {r['processes']} | {r['seconds']:.2f} | {r['per_second']:.2f} {r['unit']}/s "
                     f"| {wall} | {r['cpu_s_busiest_rank']:.2f} | {cpu} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nproc", default="1,2", help="comma-separated process counts")
    p.add_argument("--prompts", type=int, default=32, help="calibration prompts (trajectories)")
    p.add_argument("--images", type=int, default=16, help="evaluation images")
    p.add_argument("--steps", type=int, default=16, help="denoising steps (calib records steps/2 per prompt)")
    p.add_argument("--size", type=int, default=128, help="tiny SD3 image size (pixels, at most 128)")
    p.add_argument("--batch-size", type=int, default=2, help="images per pipeline call in the eval job")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads per process")
    p.add_argument("--device", default="cpu", help="cpu, or cuda (one GPU per process)")
    p.add_argument("--jobs", default="calib,calibrate,eval",
                   help="calib and calibrate always run; drop eval where the demo's text encoder is not installed")
    p.add_argument("--out", default=None, help="write the rows as JSON here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    rows = launch_all(args)
    print(f"\n{platform.node()}, {os.cpu_count()} CPUs (load average {os.getloadavg()[0]:.1f}), torch "
          f"{torch.__version__}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n{table(rows)}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
