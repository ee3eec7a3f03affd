"""``segquant eval``: full precision vs quantization presets on one or more models.

Models are local diffusers pipeline folders (loaded offline; give ``--prompts``) or the demo's model
names ``mmdit``, ``flux``, ``unet`` (shipped weights, class prompts, class accuracy by the shipped
classifier; the ``segquant`` command registers them as a :class:`ModelSuite`). Examples::

    segquant eval mmdit flux unet --presets all --per-class 10 --steps 20 --out bench-report
    segquant eval mmdit --presets w8a8,w4a8 --correction none,affiner,ptqd,tac --no-fid
    segquant eval mmdit flux unet --presets w8a8,w4a8 --baselines all --no-fid

Presets and model names are checked before any generation starts.
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from segquant.errors import ConfigError
from segquant.eval.options import add_run_arguments, did_you_mean, parse_presets


@dataclass(frozen=True)
class ModelSuite:
    """Named models that ``segquant eval`` accepts besides pipeline folders.

    ``evaluate(models, presets, args, out, optional_weights)`` runs the harness on the named
    ``models`` and writes their report into ``out``; returns ``{model: EvalResult}``.
    """

    names: tuple[str, ...]
    evaluate: Callable[[list[str], list[str], argparse.Namespace, Path, dict], dict]


def add_eval_parser(subparsers: Any, suite: ModelSuite | None = None) -> argparse.ArgumentParser:
    """Add the ``eval`` subcommand; sets ``func``. ``suite``: the named models it accepts (this module knows no
    suite itself, so the generic evaluation does not depend on the demo)."""
    p = subparsers.add_parser("eval", help="compare full precision with quantization presets (images + metrics)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    names = f"model names ({', '.join(suite.names)}) or " if suite else ""
    p.add_argument("models", nargs="+", help=f"{names}diffusers pipeline folders")
    p.add_argument("--presets", default="rtn_w8a8,w8a8,w4a8",
                   help="comma-separated preset names or YAML config paths; 'all' = every preset")
    p.add_argument("--baselines", default="",
                   help="comma-separated quantizer baselines run beside the presets (PTQ4DM, Q-Diffusion, PTQ4DiT, "
                        "SVDQuant, torchao / quanto / ModelOpt); 'all' = every one; see segquant.baselines")
    p.add_argument("--out", default="segquant-report", help="report folder")
    p.add_argument("--prompts", default=None, help="prompt file (required for pipeline folders)")
    p.add_argument("--num-prompts", type=int, default=None, help="use the first N prompts of --prompts")
    add_run_arguments(p)
    p.add_argument("--batch-size", type=int, default=None, help="images per pipeline call")
    p.add_argument("--controlnet", action="store_true",
                   help="ControlNet pipelines: generate with control images and score edge F1 (see --control-data)")
    p.add_argument("--control-data", default=None,
                   help="with --controlnet: control-data folder (`segquant dataset canny`) giving prompts + controls")
    p.add_argument("--device", default="cpu", help="pipeline folders: device")
    p.add_argument("--lpips-weights", default=None, help="torchvision AlexNet checkpoint for LPIPS (package lpips)")
    p.add_argument("--clip-weights", default=None, help="local CLIP model folder for CLIP score")
    p.add_argument("--image-reward-weights", default=None, help="ImageReward checkpoint (package image-reward)")
    p.set_defaults(func=functools.partial(run_eval, suite=suite))
    return p


def run_eval(args: argparse.Namespace, suite: ModelSuite | None = None) -> int:
    """Entry point of ``segquant eval``: check presets and models, then evaluate. Under ``torchrun`` the
    ranks share the work (``segquant.eval.harness``) and rank 0 writes the report and prints."""
    from segquant.distributed import launch

    with launch(args.device) as (world, device):
        return _run_eval(argparse.Namespace(**{**vars(args), "device": str(device)}), suite, world.is_main)


def _run_eval(args: argparse.Namespace, suite: ModelSuite | None, main: bool) -> int:
    from segquant.baselines import parse_baselines
    from segquant.eval.controlnet import check_control_args
    from segquant.eval.corrections import parse_corrections

    presets = parse_presets(args.presets) + parse_baselines(args.baselines)
    out, t0 = Path(args.out), time.perf_counter()
    parse_corrections(args.correction)
    named = [m for m in args.models if suite and m in suite.names]
    folders = [m for m in args.models if m not in named]
    check_control_args(args, folders)
    for folder in folders:
        check_folder(folder, args.prompts or args.control_data, suite)
    weights = {"lpips": args.lpips_weights, "clip": args.clip_weights, "image_reward": args.image_reward_weights}
    results = suite.evaluate(named, presets, args, out, weights) if named else {}
    for folder in folders:
        results[folder] = _eval_folder(folder, presets, args, out, weights)
    if main:
        print_results(results)
        print(f"\nreport written to {out.resolve()} ({time.perf_counter() - t0:.0f} s)")
    return 1 if any("error" in r for res in results.values() for r in res.rows) else 0


def print_results(results: dict) -> None:
    """Print each result's table and its notes (calibration, FID/KID caveats) to stdout."""
    from segquant.eval.report import indicative_columns, markdown_table, result_notes

    for name, res in results.items():
        notes = "".join(f"\n{note}" for note in result_notes(res))
        table = markdown_table(res.rows, indicative_columns(res))
        print(f"\n{name} ({res.settings['denoiser_class']})\n{table}{notes}")


def check_folder(folder: str, prompts: str | None, suite: ModelSuite | None) -> None:
    """Raise ``ConfigError`` unless ``folder`` is a diffusers pipeline folder and ``prompts`` (``--prompts``,
    or ``--control-data`` with ``--controlnet``) is given."""
    path = Path(folder)
    if not path.exists():
        known = f"a model name ({', '.join(suite.names)}){did_you_mean(folder, suite.names)} or " if suite else ""
        raise ConfigError(f"unknown model {folder!r}: expected {known}a diffusers pipeline folder")
    if not (path / "model_index.json").is_file():
        raise ConfigError(f"{folder}: not a diffusers pipeline folder (no model_index.json)")
    if not prompts:
        raise ConfigError(f"--prompts is required to evaluate the pipeline folder {folder!r}")


def _eval_folder(folder: str, presets: list[str], args, out: Path, weights: dict):
    """Evaluate a local diffusers pipeline folder (prompts from ``--prompts``)."""
    from diffusers import DiffusionPipeline

    from segquant.data.prompts import load_prompts
    from segquant.distributed import current
    from segquant.eval.corrections import parse_corrections
    from segquant.eval.harness import EvalConfig, evaluate
    from segquant.eval.report import write_report

    pipe = DiffusionPipeline.from_pretrained(folder, local_files_only=True).to(args.device)
    pipe.set_progress_bar_config(disable=True)
    if args.controlnet:
        from segquant.eval.controlnet import control_eval_kwargs

        data = control_eval_kwargs(pipe, args.control_data, args.num_prompts, args.calib_prompts)
    else:
        prompts = [str(p) for p in load_prompts(args.prompts)][: args.num_prompts]
        data = dict(prompts=prompts, calib_prompts=prompts[-min(args.calib_prompts, len(prompts)):])
    cfg = EvalConfig(**data, seed=args.seed, num_inference_steps=args.steps, guidance_scale=args.guidance,
                     batch_size=args.batch_size or 4, calib_steps=args.calib_steps,
                     fid=not args.no_fid, optional_weights=weights, corrections=parse_corrections(args.correction),
                     fp8_numerics=args.fp8_numerics)
    result = evaluate(pipe, presets, cfg)
    if current().is_main:
        sub = out / Path(folder).name
        write_report(result, sub, title=Path(folder).name)
        (sub / "command.json").write_text(json.dumps(vars(args), indent=2, default=str))
    return result
