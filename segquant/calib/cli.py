"""``segquant calibrate``: record a calibration set from a pipeline folder or a built-in tiny pipeline.

Example (64 prompts of a COCO caption file, 8 of 28 steps each)::

    segquant calibrate ./stable-diffusion-3.5-medium --prompts coco.csv \\
        --sampler uniform --steps 28 --sample-size 64 --timestep-per-sample 8 --out calib/sd35

A built-in model (``tiny-sd3``, ``tiny-flux``, ``tiny-sdxl``, ``tiny-sd3_controlnet``, ...) has no text
encoder: its prompts are turned into deterministic embeddings (and a control image for ControlNets).
A ControlNet pipeline takes ``--control-data`` (prompts + Canny control images) instead of ``--prompts``;
``--layer controlnet`` records the ControlNet instead of the denoiser.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from segquant.errors import ConfigError

TINY_PREFIX = "tiny-"
_DTYPES = ("float32", "float16", "bfloat16")


def add_calibrate_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``calibrate`` subcommand to an ``argparse`` subparsers object; sets ``func``."""
    p = subparsers.add_parser("calibrate", help="record a calibration set from a diffusers pipeline",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="diffusers pipeline folder (loaded offline) or tiny-<name> (tiny-sd3, tiny-flux, ...)")
    p.add_argument("--prompts", default=None, help="prompt file: lines, CSV/TSV, COCO, MJHQ, PartiPrompts, DCI")
    p.add_argument("--control-data", default=None,
                   help="ControlNet pipelines: control-data folder (`segquant dataset canny`); its prompts and "
                        "control images replace --prompts")
    p.add_argument("--prompt-format", default="auto", help="prompt file format (default: auto)")
    p.add_argument("--out", required=True, help="output folder (shards + manifest.json); resumed if interrupted")
    s = p.add_argument_group("sampler")
    s.add_argument("--sampler", choices=("uniform", "normal", "steps"), default="uniform")
    s.add_argument("--steps", type=int, default=28, help="denoising steps per trajectory (max_timestep)")
    s.add_argument("--sample-size", type=int, default=16, help="number of prompts (trajectories)")
    s.add_argument("--timestep-per-sample", type=int, default=4, help="recorded steps per trajectory")
    s.add_argument("--mean", type=float, default=None, help="normal sampler: mean step index")
    s.add_argument("--std", type=float, default=None, help="normal sampler: std in steps")
    s.add_argument("--step-list", default=None, help="steps sampler: comma-separated step indices")
    s.add_argument("--seed", type=int, default=0, help="sampler seed and trajectory seeds (seed + prompt index)")
    g = p.add_argument_group("pipeline")
    g.add_argument("--layer", default=None, help="module to record (default: the main denoiser)")
    g.add_argument("--guidance-scale", type=float, default=None)
    g.add_argument("--height", type=int, default=None)
    g.add_argument("--width", type=int, default=None)
    g.add_argument("--pipeline-arg", action="append", default=[], metavar="KEY=JSON",
                   help="extra pipeline-call argument, value parsed as JSON (repeatable)")
    g.add_argument("--device", default="cpu")
    g.add_argument("--dtype", choices=_DTYPES, default="float32")
    o = p.add_argument_group("storage")
    o.add_argument("--chunk-size", type=int, default=400)
    o.add_argument("--no-compress", action="store_true", help="store shards without zstandard compression")
    o.add_argument("--overwrite", action="store_true", help="replace a set made with other settings")
    p.set_defaults(func=run_calibrate)
    return p


def _sampler(args: argparse.Namespace):
    from segquant.calib.samplers import NormalSampler, StepListSampler, UniformSampler

    if args.sampler == "uniform":
        return UniformSampler(args.steps, args.sample_size, args.timestep_per_sample, seed=args.seed)
    if args.sampler == "normal":
        return NormalSampler(args.steps, args.sample_size, args.timestep_per_sample, args.mean, args.std,
                             seed=args.seed)
    if not args.step_list:
        raise ConfigError("--step-list is required with --sampler steps")
    steps = [int(s) for s in args.step_list.split(",") if s.strip()]
    return StepListSampler(steps, args.steps, args.sample_size, seed=args.seed)


def _pipeline_args(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in args.pipeline_arg:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--pipeline-arg {item!r}: expected KEY=VALUE")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    for key in ("guidance_scale", "height", "width"):
        if getattr(args, key) is not None:
            out[key] = getattr(args, key)
    return out


def _load_pipeline(model: str, device: str, dtype: str):
    """``(pipe, tiny_name_or_None)``."""
    import torch

    torch_dtype = getattr(torch, dtype)
    if model.startswith(TINY_PREFIX):
        from segquant.models.tiny_pipelines import TINY_PIPELINES, build_tiny_pipeline

        name = model[len(TINY_PREFIX):]
        if name not in TINY_PIPELINES:
            allowed = ", ".join(TINY_PREFIX + n for n in TINY_PIPELINES)
            raise ConfigError(f"model: unknown built-in pipeline {model!r}; allowed: {allowed}")
        pipe = build_tiny_pipeline(name)
        if device != "cpu" or torch_dtype != torch.float32:
            pipe = pipe.to(device=device, dtype=torch_dtype)
        return pipe, name
    if not Path(model).is_dir():
        raise ConfigError(f"model: {model!r} is neither a pipeline folder nor a built-in tiny-<name> model")
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(model, local_files_only=True, torch_dtype=torch_dtype)
    return pipe.to(device), None


def _prompt_inputs(tiny: str | None, pipe_args: dict[str, Any]):
    """Prompt -> call arguments of a tiny pipeline (embeddings; explicit CLI arguments such as height,
    width win), or ``None`` for a real pipeline (the prompt string itself)."""
    if tiny is None:
        return None
    from segquant.models.tiny_pipelines import tiny_prompt_inputs

    def inputs(prompt: str) -> dict[str, Any]:
        item = tiny_prompt_inputs(tiny, prompt)
        return {k: v for k, v in item.items() if k not in pipe_args}

    return inputs


def _items(args: argparse.Namespace, pipe: Any, tiny: str | None, pipe_args: dict[str, Any]) -> list[Any]:
    """The calibration items: control triples (``--control-data``) or prompts (``--prompts``)."""
    inputs = _prompt_inputs(tiny, pipe_args)
    if args.control_data:
        from segquant.calib.control import control_items

        return control_items(pipe, args.control_data, limit=args.sample_size, prompt_inputs=inputs)
    from segquant.data.prompts import load_prompts

    prompts = load_prompts(args.prompts, limit=args.sample_size, format=args.prompt_format)
    return prompts if inputs is None else [inputs(p) for p in prompts]


def run_calibrate(args: argparse.Namespace) -> int:
    """Run the ``calibrate`` subcommand (under ``torchrun``: every rank records a share of the prompts,
    see :mod:`segquant.distributed`); returns the exit status."""
    from segquant.distributed import launch

    with launch(args.device) as (world, device):
        return _calibrate(args, str(device), world.is_main)


def _calibrate(args: argparse.Namespace, device: str, main: bool) -> int:
    from segquant.calib.generate import generate_calibrate_set
    from segquant.pipeline.glue import get_denoiser

    if bool(args.prompts) == bool(args.control_data):
        raise ConfigError("give exactly one of --prompts and --control-data")
    sampler = _sampler(args)
    pipe, tiny = _load_pipeline(args.model, device, args.dtype)
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    pipe_args = _pipeline_args(args)
    layer = args.layer or get_denoiser(pipe)[0]
    items = _items(args, pipe, tiny, pipe_args)
    start = time.perf_counter()
    dataset = generate_calibrate_set(
        pipe, sampler, items, layer, dump_path=args.out,
        chunk_size=args.chunk_size, compress=not args.no_compress, seed=args.seed,
        overwrite=args.overwrite, progress=True, **pipe_args,
    )
    elapsed = time.perf_counter() - start
    if main:
        print(f"calibration set: {len(dataset)} records of {layer} from {len(items)} prompts -> {args.out} "
              f"({elapsed:.1f} s, {len(dataset) / max(elapsed, 1e-9):.1f} records/s)")
    return 0
