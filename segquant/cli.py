"""The ``segquant`` command: ``segquant [--version] {inspect,quantize,calibrate,eval,demo,dataset} ...``."""

from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path

import segquant
from segquant.errors import SegQuantError



def load_denoiser(source: str, seed: int = 0):
    """A built-in tiny denoiser (``sd3`` or ``tiny-sd3``, ...), a local diffusers model folder or a
    ``save_quantized`` folder (loaded without its full-precision model), and an example.

    Returns ``(model, example_kwargs)``. Folders are loaded with ``local_files_only=True`` (no download).
    """
    from segquant.models.examples import example_inputs_for
    from segquant.models.loading import load_model_folder
    from segquant.models.tiny import TINY_MODELS, build_tiny_denoiser, tiny_example_inputs

    if (Path(source) / "segquant_plan.json").is_file():  # a save_quantized folder: the quantized model
        from segquant.serialization import load_quantized

        model = load_quantized(source)
        return model, example_inputs_for(model, batch=1)
    name = source.removeprefix("tiny-").replace("sdxl", "unet")
    if name in TINY_MODELS:  # "sd3" or the calibrate command's "tiny-sd3" name the same denoiser
        return build_tiny_denoiser(name, seed=seed), tiny_example_inputs(name, batch=1, seed=seed)
    if not (Path(source) / "config.json").is_file():
        raise SystemExit(f"segquant: {source!r} is neither a built-in model ({', '.join(TINY_MODELS)}) nor a "
                         "diffusers model folder with a config.json")
    model = load_model_folder(source)
    return model, example_inputs_for(model, batch=1)


def _inspect(args: argparse.Namespace) -> int:
    from segquant.plan import build_plan

    model, example = load_denoiser(args.model)
    plan = getattr(model, "segquant_plan", None) or build_plan(model, args.config, example)
    print(plan.table())
    enabled = plan.enabled_layers()
    segmented = sum(1 for layer in enabled if layer.output_segments or layer.input_segments)
    dual = sum(1 for layer in enabled if layer.dual_scale_activation)
    print(f"\n{len(plan.layers)} linear layers, {len(enabled)} quantized, {segmented} segmented, {dual} DualScale; "
          f"graph captured: {plan.graph_captured}")
    if args.json:
        plan.save_json(args.json)
        print(f"plan written to {args.json}")
    return 0


def _quantize(args: argparse.Namespace) -> int:
    """Under ``torchrun`` every rank calibrates on its share of the batches (statistics reduced across ranks,
    see ``segquant.distributed``) and rank 0 alone writes the folder."""
    from segquant.calib import load_calibrate_set
    from segquant.distributed import launch, on_main
    from segquant.quantizer import quantize
    from segquant.serialization import save_quantized

    with launch("cpu") as (world, _device):
        model, example = load_denoiser(args.model)
        calib = load_calibrate_set(args.calib).get_dataloader(batch_size=args.batch_size)
        config = args.config
        if args.fuse_projections:
            from segquant.config import as_quant_config

            config = {**as_quant_config(config).to_dict(), "fuse_projections": True}
        quantized = quantize(model, calib, config, verbose=world.is_main, example=example)
        on_main(lambda: save_quantized(quantized, args.output), f"writing {args.output}")
        if world.is_main:
            print(quantized.segquant_plan.table())
            print(f"\nquantized model written to {args.output}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="segquant", description=segquant.__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"segquant {segquant.__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress and per-layer details")
    sub = parser.add_subparsers(dest="command", metavar="command")

    inspect = sub.add_parser("inspect", help="show the quantization plan of a model (patterns, segments, formats)")
    inspect.add_argument("model", help="built-in tiny model (sd3, flux, unet, pixart, ...), a diffusers folder or "
                         "a quantized folder (its saved plan)")
    inspect.add_argument("--config", default="w8a8", help="preset name or YAML config (default: w8a8)")
    inspect.add_argument("--json", help="also write the plan to this JSON file")
    inspect.set_defaults(func=_inspect)

    quant = sub.add_parser("quantize", help="quantize a model on a calibration set and save it")
    quant.add_argument("model", help="built-in tiny model or a diffusers model folder")
    quant.add_argument("--calib", required=True, help="calibration set folder (from `segquant calibrate`)")
    quant.add_argument("--config", default="w8a8", help="preset name or YAML config (default: w8a8)")
    quant.add_argument("--batch-size", type=int, default=1)
    quant.add_argument("--fuse-projections", action="store_true",
                       help="fuse each attention's q/k/v projections into one layer with one smoothing: one "
                       "quantized input and one GEMM on the GPU (diffusers models; W8A8 INT8: no measurable PSNR "
                       "cost on the demo models, FP8 inputs: up to 0.6 dB, W4A8: up to 1.2 dB)")
    quant.add_argument("-o", "--output", required=True, help="output folder (safetensors + plan JSON)")
    quant.set_defaults(func=_quantize)

    _add_subcommands(sub)
    return parser


def _add_subcommands(sub) -> None:
    """``calibrate``, ``eval`` (which takes the demo model names through ``DEMO_SUITE``) and ``demo``.
    Imported when the parser is built, so each module stays cheap to import (heavy imports go inside
    its command function). This is the one place that wires the demo into the generic evaluation."""
    from segquant.calib.cli import add_calibrate_parser
    from segquant.data.cli import add_dataset_parser
    from segquant.demo.cli import DEMO_SUITE, add_demo_parser
    from segquant.eval.cli import add_eval_parser

    add_calibrate_parser(sub)
    add_eval_parser(sub, DEMO_SUITE)
    add_demo_parser(sub)
    add_dataset_parser(sub)
    _plain_descriptions(sub)


def _plain_descriptions(sub) -> None:
    """Every (nested) subcommand's description as plain text (:func:`plain_text`)."""
    for command in sub.choices.values():
        command.description = plain_text(command.description or "")
        for action in command._actions:
            if isinstance(action, argparse._SubParsersAction):
                _plain_descriptions(action)


def plain_text(doc: str) -> str:
    """A module docstring as ``--help`` shows it: reST literals and roles as plain text (````x```` and
    ``:func:`pkg.f``` -> ```x``` and ``f``), ``Example::`` -> ``Example:``."""
    doc = re.sub(r":\w+:`~?([\w.]+\.)?(\w+)`", r"\2", doc)
    return doc.replace("``", "`").replace("::\n", ":\n")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except (SegQuantError, FileNotFoundError) as err:
        print(f"segquant {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
