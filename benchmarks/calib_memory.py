"""Calibration-set generation: peak memory vs set size, and recording overhead vs plain generation.

Question 1 (memory): does generating a set much larger than one chunk keep peak memory flat?
Each configuration runs in a fresh subprocess; we report the growth of the peak RSS (VmHWM) over
the RSS after building the pipeline and one warm-up trajectory. Records are made large on purpose
(the tiny SD3 pipeline with 4096-token random prompt embeddings: ~1 MiB per record, so a chunk is
about ``--chunk-size`` MiB). Dumped sets of 5 and 20 chunks should need the same memory; in-memory sets
grow with the set. Streaming the dumped set back through ``get_dataloader(shuffle=True)`` is measured
the same way.

Question 2 (overhead): seconds per trajectory of plain fixed-seed generation
(``segquant.pipeline.generate``, latents only) vs ``generate_calibrate_set`` recording every step
(worst case: no early stop) in memory, dumped with and without zstd, and recording only the first
quarter of the steps (the trajectory stops after the last recorded step).

Usage: python benchmarks/calib_memory.py [--chunk-size 16] [--steps 8]   (CPU, ~3 minutes)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch



def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _items(n: int, tokens: int) -> list[dict]:
    """Prompt items with random (incompressible) ``tokens``-long embeddings (1, tokens, 32) float32."""
    from segquant.models.tiny_pipelines import tiny_prompt_inputs

    gen = torch.Generator().manual_seed(0)
    items = []
    for i in range(n):
        item = tiny_prompt_inputs("sd3", f"prompt {i}")
        for key in ("prompt_embeds", "negative_prompt_embeds"):
            item[key] = torch.randn(1, tokens, item[key].shape[-1], generator=gen)
        items.append(item)
    return items


def _child(args: argparse.Namespace) -> dict:
    """One measurement in this (fresh) process; returns a JSON-able result."""
    torch.set_num_threads(1)
    from segquant.calib import StepListSampler, UniformSampler, generate_calibrate_set, load_calibrate_set
    from segquant.models.tiny_pipelines import build_tiny_pipeline
    from segquant.pipeline import generate

    if args.mode == "read":  # stream a dumped set back, shuffled, in batches of 4
        base = _rss_kib("VmRSS")
        n = 0
        for batch in load_calibrate_set(args.dump).get_dataloader(batch_size=4, shuffle=True):
            n += batch["hidden_states"].shape[0] // 2
        disk = sum(p.stat().st_size for p in Path(args.dump).iterdir()) / 2**20
        return {"records": n, "peak_growth_mib": (_rss_kib("VmHWM") - base) / 1024, "disk_mib": disk}
    pipe = build_tiny_pipeline("sd3")
    items = _items(args.prompts, args.tokens)
    generate(pipe, items[:1], num_inference_steps=args.steps, output_type="latent", guidance_scale=2.0)  # warm-up
    base = _rss_kib("VmRSS")
    start = time.perf_counter()
    records = 0
    if args.mode == "plain":
        generate(pipe, items, num_inference_steps=args.steps, output_type="latent", guidance_scale=2.0)
    else:
        sampler = UniformSampler(args.steps, args.prompts, args.per_sample)
        if args.first_steps:  # record steps 0..k-1: the trajectory stops early after step k-1
            sampler = StepListSampler(range(args.per_sample), args.steps, args.prompts)
        dump = None if args.mode == "memory" else args.dump
        records = len(generate_calibrate_set(pipe, sampler, items, "transformer", dump_path=dump,
                                             chunk_size=args.chunk_size, compress=args.mode == "zstd",
                                             progress=False, guidance_scale=2.0))
    return {"records": records, "seconds": time.perf_counter() - start,
            "peak_growth_mib": (_rss_kib("VmHWM") - base) / 1024}


def _run_child(mode: str, prompts: int, per_sample: int, args: argparse.Namespace, dump: Path,
               tokens: int, first_steps: bool = False) -> dict:
    cmd = [sys.executable, __file__, "--child", "--mode", mode, "--prompts", str(prompts),
           "--per-sample", str(per_sample), "--steps", str(args.steps), "--chunk-size", str(args.chunk_size),
           "--dump", str(dump), "--tokens", str(tokens)] + (["--first-steps"] if first_steps else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _memory_table(args: argparse.Namespace) -> list[str]:
    per_chunk_prompts = args.chunk_size // args.steps  # every step recorded: steps records per prompt
    rows = ["| set | records | chunks | generation: peak RSS growth (MiB) | read-back: peak RSS growth (MiB) "
            "| on disk (MiB) |", "|---|---|---|---|---|---|"]
    for mode in ("zstd", "raw", "memory"):
        for chunks in (5, 20):
            with tempfile.TemporaryDirectory() as tmp:
                dump = Path(tmp) / "set"
                r = _run_child(mode, per_chunk_prompts * chunks, args.steps, args, dump, args.tokens)
                read = _run_child("read", 0, 1, args, dump, args.tokens) if mode != "memory" else {}
            rows.append(f"| {mode} | {r['records']} | {chunks} | {r['peak_growth_mib']:.0f} | "
                        f"{read.get('peak_growth_mib', float('nan')):.0f} | {read.get('disk_mib', float('nan')):.0f} |")
            print(rows[-1], file=sys.stderr)
    return rows


def _overhead_table(args: argparse.Namespace) -> list[str]:
    n = 8
    rows = ["| run | s / trajectory | vs plain |", "|---|---|---|"]
    tmp = tempfile.TemporaryDirectory()
    tokens = args.overhead_tokens
    plain = _run_child("plain", n, args.steps, args, Path(tmp.name) / "p", tokens)["seconds"] / n
    rows.append(f"| plain generation ({args.steps} steps, latents) | {plain:.3f} | 1.00x |")
    quarter = max(1, args.steps // 4)
    for mode, k, first, label in (("memory", args.steps, False, "record all steps, in memory"),
                                  ("raw", args.steps, False, "record all steps, dump, no compression"),
                                  ("zstd", args.steps, False, "record all steps, dump, zstd"),
                                  ("zstd", quarter, True, f"record the first {quarter} steps, dump, zstd (early stop)")):
        t = _run_child(mode, n, k, args, Path(tmp.name) / f"{mode}{k}", tokens, first)["seconds"] / n
        rows.append(f"| {label} | {t:.3f} | {t / plain:.2f}x |")
        print(rows[-1], file=sys.stderr)
    tmp.cleanup()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="zstd")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--per-sample", type=int, default=8)
    parser.add_argument("--dump", default=None)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--chunk-size", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=4096, help="memory runs: text tokens (4096: 1 MiB records)")
    parser.add_argument("--overhead-tokens", type=int, default=333, help="overhead runs: text tokens (SD3: 333)")
    parser.add_argument("--first-steps", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args)))
        return
    mib = 2 * args.tokens * 32 * 4 / 2**20
    print(f"# calib_memory: torch {torch.__version__}, CPU, 1 thread, {args.steps} steps, CFG batch 2; memory: "
          f"{args.tokens} text tokens ({mib:.2f} MiB/record), chunk_size {args.chunk_size} "
          f"({mib * args.chunk_size:.0f} MiB/chunk); overhead: {args.overhead_tokens} tokens\n")
    print("\n".join(_memory_table(args)) + "\n")
    print("\n".join(_overhead_table(args)))


if __name__ == "__main__":
    main()
