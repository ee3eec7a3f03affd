"""``segquant eval``: full precision vs quantization presets on one or more models.

Models are demo names (``mmdit``, ``flux``, ``unet``: the shipped weights, class prompts, class accuracy
by the shipped classifier) or local diffusers pipeline folders (loaded offline; give ``--prompts``).
Example (the BENCHMARKS table)::

    segquant eval mmdit flux unet --presets all --per-class 10 --steps 20 --out bench-report
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any


def add_eval_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``eval`` subcommand; sets ``func``."""
    p = subparsers.add_parser("eval", help="compare full precision with quantization presets (images + metrics)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", help="demo model names (mmdit, flux, unet) or diffusers pipeline folders")
    p.add_argument("--presets", default="rtn_w8a8,w8a8,w4a8",
                   help="comma-separated preset names or YAML config paths; 'all' = every preset")
    p.add_argument("--out", default="segquant-report", help="report folder")
    p.add_argument("--prompts", default=None, help="prompt file (required for pipeline folders)")
    p.add_argument("--num-prompts", type=int, default=None, help="use the first N prompts of --prompts")
    add_run_arguments(p)
    p.add_argument("--batch-size", type=int, default=None, help="images per pipeline call")
    p.add_argument("--device", default="cpu", help="pipeline folders: device")
    p.add_argument("--lpips-weights", default=None, help="torchvision AlexNet checkpoint for LPIPS (package lpips)")
    p.add_argument("--clip-weights", default=None, help="local CLIP model folder for CLIP score")
    p.add_argument("--image-reward-weights", default=None, help="ImageReward checkpoint (package image-reward)")
    p.set_defaults(func=run_eval)
    return p


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """Generation, calibration and metric options shared by ``segquant eval`` and ``segquant demo``."""
    p.add_argument("--per-class", type=int, default=2, help="demo models: evaluation prompts per class (10 classes)")
    p.add_argument("--steps", type=int, default=10, help="denoising steps")
    p.add_argument("--guidance", type=float, default=4.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--calib-prompts", type=int, default=8, help="calibration trajectories")
    p.add_argument("--calib-steps", type=int, default=None,
                   help="recorded steps per calibration trajectory (default: every step)")
    p.add_argument("--no-fid", action="store_true", help="skip FID/KID (Inception on CPU is the slowest metric)")
    p.add_argument("--weights-dir", default=None, help="folder with the demo weights (default: shipped)")


def parse_presets(spec: str) -> list[str]:
    """``"all"`` or a comma-separated list of preset names / YAML paths."""
    from segquant.presets import PRESETS

    if spec == "all":
        return list(PRESETS)
    return [p.strip() for p in spec.split(",") if p.strip()]


def run_eval(args: argparse.Namespace) -> int:
    """Entry point of ``segquant eval``."""
    from segquant.demo.cli import evaluate_demo_models
    from segquant.demo.models import MODEL_NAMES
    from segquant.eval.report import markdown_table

    weights = {"lpips": args.lpips_weights, "clip": args.clip_weights, "image_reward": args.image_reward_weights}
    presets, out, t0 = parse_presets(args.presets), Path(args.out), time.perf_counter()
    demo = [m for m in args.models if m in MODEL_NAMES]
    folders = [m for m in args.models if m not in MODEL_NAMES]
    results = {}
    if demo:
        settings = {"models": demo, "presets": presets, "per_class": args.per_class, "steps": args.steps,
                    "guidance": args.guidance, "seed": args.seed, "calib_prompts": args.calib_prompts,
                    "calib_steps": args.calib_steps, "fid": not args.no_fid}
        results.update(evaluate_demo_models(settings, out, args.weights_dir, optional_weights=weights))
    for folder in folders:
        results[folder] = _eval_folder(folder, presets, args, out, weights)
    for name, res in results.items():
        print(f"\n{name} ({res.settings['denoiser_class']})\n{markdown_table(res.rows)}")
    print(f"\nreport written to {out.resolve()} ({time.perf_counter() - t0:.0f} s)")
    return 1 if any("error" in r for res in results.values() for r in res.rows) else 0


def _eval_folder(folder: str, presets: list[str], args, out: Path, weights: dict):
    """Evaluate a local diffusers pipeline folder (prompts from ``--prompts``)."""
    from diffusers import DiffusionPipeline

    from segquant.data.prompts import load_prompts
    from segquant.errors import ConfigError
    from segquant.eval.harness import EvalConfig, evaluate
    from segquant.eval.report import write_report

    if not args.prompts:
        raise ConfigError(f"--prompts is required to evaluate the pipeline folder {folder!r}")
    if not Path(folder, "model_index.json").is_file():
        raise FileNotFoundError(f"{folder}: not a demo model name nor a diffusers pipeline folder (no model_index.json)")
    prompts = [str(p) for p in load_prompts(args.prompts)][: args.num_prompts]
    pipe = DiffusionPipeline.from_pretrained(folder, local_files_only=True).to(args.device)
    pipe.set_progress_bar_config(disable=True)
    n_cal = min(args.calib_prompts, len(prompts))
    cfg = EvalConfig(prompts=prompts, seed=args.seed, num_inference_steps=args.steps, guidance_scale=args.guidance,
                     batch_size=args.batch_size or 4, calib_prompts=prompts[-n_cal:], calib_steps=args.calib_steps,
                     fid=not args.no_fid, optional_weights=weights)
    result = evaluate(pipe, presets, cfg)
    sub = out / Path(folder).name
    write_report(result, sub, title=Path(folder).name)
    (sub / "command.json").write_text(json.dumps(vars(args), indent=2, default=str))
    return result
