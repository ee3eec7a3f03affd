"""``segquant demo``: the main job on the shipped demo models.

For each demo model (MMDiT, FLUX-style, SDXL-style UNet): record calibration inputs, quantize with
the baseline and the SegQuant presets, generate with the same prompts / seeds / steps as full
precision, score (PSNR, SSIM, FID/KID, class accuracy, classifier-feature distance, per-step
denoiser error, time, peak memory) and write the report folder (``README.md``, ``results.json``,
one folder per model with its table, image grid and error plot). Presets and model names are
checked before any generation starts.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from segquant.demo.models import MODEL_NAMES
from segquant.errors import ConfigError
from segquant.eval.cli import ModelSuite, print_results
from segquant.eval.corrections import parse_corrections
from segquant.eval.options import add_run_arguments, checked_names, parse_presets

# The plain round-to-nearest baselines and SegQuant at W8A8 and W4A8 (fits the 5-minute CPU budget);
# ``--presets all`` adds FP8 (slow to emulate on CPU), W4A16, W4A4 and the alpha search.
DEMO_PRESETS = ("rtn_w8a8", "w8a8", "rtn_w4a8", "w4a8")
QUICK_PRESETS = ("rtn_w8a8", "w8a8")


def add_demo_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``demo`` subcommand; sets ``func``."""
    p = subparsers.add_parser("demo", help="quantize and evaluate the shipped demo models (the main job)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="segquant-report", help="report folder (default: ./segquant-report)")
    p.add_argument("--models", default="mmdit,flux,unet", help="comma-separated demo models")
    p.add_argument("--presets", default=None,
                   help=f"comma-separated presets (default: {','.join(DEMO_PRESETS)}; 'all' = every preset)")
    add_run_arguments(p)
    p.add_argument("--quick", action="store_true",
                   help="reduced CI setting: one model (mmdit), presets rtn_w8a8,w8a8, 1 prompt per class, "
                        "4 steps, 2 calibration prompts (every step recorded, as in the full run), no FID")
    p.set_defaults(func=run_demo)
    return p


def demo_models(spec: str) -> list[str]:
    """The comma-separated demo model names of ``spec``; an unknown name raises ``ConfigError``."""
    return checked_names(spec, MODEL_NAMES, "--models", "demo model", f"demo models: {', '.join(MODEL_NAMES)}")


def demo_settings(args: argparse.Namespace) -> dict:
    """The effective settings of a demo run (``--quick`` overrides the others), checked."""
    presets = list(DEMO_PRESETS) if args.presets is None else parse_presets(args.presets)
    s = {"models": demo_models(args.models), "presets": presets,
         "per_class": args.per_class, "steps": args.steps, "guidance": args.guidance, "seed": args.seed,
         "calib_prompts": args.calib_prompts, "calib_steps": args.calib_steps, "fid": not args.no_fid,
         "corrections": list(parse_corrections(args.correction)), "fp8_numerics": args.fp8_numerics}
    if args.quick:
        s.update(models=["mmdit"], presets=list(QUICK_PRESETS) if args.presets is None else presets,
                 per_class=1, steps=4, calib_prompts=2, fid=False)  # calib_steps as given: every step
    return s


def demo_prompts(settings: dict) -> tuple[list[str], list[int], list[str]]:
    """``(prompts, labels, calibration prompts)`` of a demo run: class captions (or their paraphrases with
    ``settings["prompts"] == "paraphrased"``), and calibration captions of another seed, disjoint from them
    where possible."""
    from segquant.demo import paraphrases
    from segquant.demo.data import eval_prompts

    prompts, labels = eval_prompts(settings["per_class"], seed=settings["seed"])
    calib = eval_prompts(max(1, -(-settings["calib_prompts"] // 10)), seed=settings["seed"] + 1)[0]
    calib = [c for c in calib if c not in prompts][: settings["calib_prompts"]] or calib[: settings["calib_prompts"]]
    if settings.get("prompts") == paraphrases.NAME:  # unseen wording; calibration stays the same
        prompts, labels = paraphrases.paraphrase_prompts(settings["per_class"])
    return prompts, labels, calib


def evaluate_demo_models(settings: dict, out: str | Path, weights_dir=None, progress: bool = True,
                         optional_weights: dict | None = None) -> dict:
    """Run the harness on each demo model of ``settings`` and write the report into ``out``.

    Returns ``{model: EvalResult}``. The report: ``out/<model>/`` (results.md/json, grid.png,
    step_error.png) and ``out/README.md`` + ``out/results.json`` with every table.
    """
    from segquant.demo.classifier import load_classifier
    from segquant.demo.pipeline import WEIGHTS_DIR
    from segquant.distributed import current
    from segquant.eval.harness import evaluate
    from segquant.eval.report import write_report

    out = Path(out)
    prompts, labels, calib = demo_prompts(settings)
    classifier = load_classifier(Path(weights_dir or WEIGHTS_DIR) / "classifier")
    results, t0 = {}, time.perf_counter()
    control = settings.get("controlnet", False)
    extra = {}
    if control:  # each prompt's control: the Canny edges of a test image of its class
        from segquant.demo.controlnet import demo_control_kwargs

        extra = demo_control_kwargs(labels, calib)
    for name in settings["models"]:
        pipe = _load(name, weights_dir, control)
        cfg = demo_eval_config(settings, prompts, labels, calib, classifier=classifier,
                               optional_weights=optional_weights or {}, **extra)
        results[name] = evaluate(pipe, settings["presets"], cfg, progress=progress)
        if current().is_main:  # under torchrun only rank 0 holds the images and metrics
            write_report(results[name], out / name, title=f"{name} ({results[name].settings['denoiser_class']})")
    if current().is_main:
        write_summary(results, out, settings, time.perf_counter() - t0)
    return results


def demo_eval_config(settings: dict, prompts: list[str], labels: list[int], calib: list[str], **extra):
    """The harness settings of a demo run (``settings`` as :func:`demo_settings`, prompts as :func:`demo_prompts`);
    ``extra``: further ``EvalConfig`` fields (classifier, control images, ...)."""
    from segquant.eval.harness import EvalConfig

    return EvalConfig(prompts=prompts, labels=labels, seed=settings["seed"], num_inference_steps=settings["steps"],
                      guidance_scale=settings["guidance"], batch_size=10, calib_prompts=calib,
                      calib_steps=settings["calib_steps"], calib_batch_size=max(1, len(calib)), error_images=10,
                      fid=settings["fid"], corrections=tuple(settings.get("corrections", ())),
                      fp8_numerics=settings.get("fp8_numerics", "float32"), **extra)


def _load(name: str, weights_dir, control: bool):
    """The demo pipeline ``name``, with its ControlNet when ``control``."""
    if control:
        from segquant.demo.controlnet import load_demo_controlnet_pipeline

        return load_demo_controlnet_pipeline(name, weights_dir)
    from segquant.demo.pipeline import load_demo_pipeline

    return load_demo_pipeline(name, weights_dir)


def write_summary(results: dict, out: Path, settings: dict, seconds: float) -> Path:
    """``out/README.md`` (all tables, linked images) and ``out/results.json``."""
    from segquant.eval.report import markdown_section, result_json

    lines = ["# segquant demo report", "",
             f"Settings: `{json.dumps(settings)}`; total wall time {seconds:.0f} s.", ""]
    for name, res in results.items():
        lines += [markdown_section(res, f"{name} ({res.settings['denoiser_class']})", image_prefix=f"{name}/"), ""]
    (out / "README.md").write_text("\n".join(lines))
    payload = {"settings": settings, "seconds": seconds, "models": {k: result_json(v) for k, v in results.items()}}
    (out / "results.json").write_text(json.dumps(payload, indent=2))
    return out / "README.md"


def run_demo(args: argparse.Namespace) -> int:
    """Entry point of ``segquant demo``."""
    settings = demo_settings(args)
    t0 = time.perf_counter()
    results = evaluate_demo_models(settings, args.out, args.weights_dir, progress=True)
    print_results(results)
    failed = [f"{n}/{r['config']}" for n, res in results.items() for r in res.rows if "error" in r]
    print(f"\nreport written to {Path(args.out).resolve()} ({time.perf_counter() - t0:.0f} s)")
    if failed:
        print(f"failed presets: {', '.join(failed)}")
        return 1
    return 0


def _evaluate_named(models: list[str], presets: list[str], args: argparse.Namespace, out: Path,
                    optional_weights: dict) -> dict:
    """``ModelSuite.evaluate`` of the demo models (``segquant eval mmdit ...``); ``--prompts paraphrased``:
    the paraphrased class captions of ``segquant.demo.paraphrases`` instead of the class captions."""
    if args.prompts not in (None, "paraphrased"):
        raise ConfigError(f"--prompts {args.prompts!r}: the demo models take no prompt file; use 'paraphrased' "
                          "for the paraphrased class captions")
    settings = {"models": models, "presets": presets, "per_class": args.per_class, "steps": args.steps,
                "guidance": args.guidance, "seed": args.seed, "calib_prompts": args.calib_prompts,
                "calib_steps": args.calib_steps, "fid": not args.no_fid,
                "corrections": list(parse_corrections(args.correction)), "controlnet": args.controlnet,
                "prompts": args.prompts, "fp8_numerics": args.fp8_numerics}
    return evaluate_demo_models(settings, out, args.weights_dir, optional_weights=optional_weights)


#: Lets ``segquant eval`` take the demo model names.
DEMO_SUITE = ModelSuite(names=MODEL_NAMES, evaluate=_evaluate_named)
