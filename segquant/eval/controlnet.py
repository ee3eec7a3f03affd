"""``segquant eval --controlnet``: evaluate a ControlNet pipeline folder on a control-data folder.

The prompts and control images come from ``--control-data`` (``segquant dataset canny``): the first
``--num-prompts`` triples are evaluated, the last ``--calib-prompts`` calibrate. Images are generated
at the control data's resolution, so the edge F1 (``segquant.eval.edges``) compares like with like.
The harness quantizes the pipeline's main denoiser; the ControlNet stays in full precision there
(quantize it with ``segquant.calib.control.quantize_components``).
"""

from __future__ import annotations

import argparse
from typing import Any

from segquant.errors import ConfigError


def check_control_args(args: argparse.Namespace, folders: list[str]) -> None:
    """Raise ``ConfigError`` for ControlNet options that cannot work together (before any generation)."""
    if args.control_data and not args.controlnet:
        raise ConfigError("--control-data is only used with --controlnet")
    if not args.controlnet:
        return
    if folders and not args.control_data:
        raise ConfigError("--controlnet with a pipeline folder needs --control-data (from `segquant dataset canny`)")
    if args.correction not in (None, "none"):
        raise ConfigError("--correction is not supported with --controlnet (the corrections are fitted without "
                          "control images)")


def control_eval_kwargs(pipe: Any, folder: str, num_prompts: int | None, calib_prompts: int) -> dict[str, Any]:
    """``EvalConfig`` keyword arguments for a ControlNet run: prompts, controls, their calibration twins,
    the pipeline's control argument and the generation size (``pipeline_kwargs`` height / width)."""
    import torch

    from segquant.calib.control import control_argument
    from segquant.data.control import load_control_dataset

    data = load_control_dataset(folder)
    if len(data) == 0:
        raise ConfigError(f"{folder}: the control data holds no triple")
    n_eval = len(data) if num_prompts is None else min(num_prompts, len(data))
    calib = range(max(0, len(data) - calib_prompts), len(data))
    controls = torch.cat([data.control(i) for i in range(n_eval)])
    size = controls.shape[-1]
    return dict(prompts=data.prompts[:n_eval], controls=controls,
                calib_prompts=[data.prompts[i] for i in calib],
                calib_controls=torch.cat([data.control(i) for i in calib]),
                control_argument=control_argument(pipe), pipeline_kwargs={"height": size, "width": size})
