"""Command-line options shared by ``segquant eval`` and ``segquant demo``, checked before any work starts.

Everything here is validated up front, so a typo fails in a second with a one-line ``ConfigError``
(the ``segquant`` command prints it and exits 2) instead of after minutes of full-precision
generation.
"""

from __future__ import annotations

import argparse
import difflib
from pathlib import Path
from typing import Iterable

from segquant.errors import ConfigError

CONFIG_SUFFIXES = (".yaml", ".yml", ".json")


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
    # the names of segquant.kernels.fp8_accumulation.FP8_NUMERICS, spelled out: that module imports torch, which
    # option checking does not wait for
    p.add_argument("--fp8-numerics", choices=["float32", "tensor-cores"], default="float32",
                   help="how the emulated backend sums FP8 products: exactly in float32 (fast), or as Hopper's "
                        "tensor cores do, to the bit of the gpu backend (slow on the CPU)")
    p.add_argument("--weights-dir", default=None, help="folder with the demo weights (default: shipped)")
    p.add_argument("--correction", default="none",
                   help="comma-separated per-step corrections shown on top of each preset: none, affiner, ptqd, "
                        "tac (fitted on the calibration prompts; the uncorrected row is always shown); an item "
                        "may carry settings of its own, e.g. affiner:blocksize=8:lambda1=0.01 (keys: blocksize, "
                        "alpha, lambda1, lambda2, noise_target, recurrent; prompts=N to fit on the first N "
                        "calibration prompts; validation_prompts=V to hold the last V of them out and apply the "
                        "correction at the strength (0, 0.5 or 1) that is best on them; validation_z=Z to take a "
                        "strength over 0 only where its gain there exceeds Z standard errors)")


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` for the closest of ``known``, or ``""``."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def checked_names(spec: str, known: Iterable[str], option: str, what: str, listing: str) -> list[str]:
    """The comma-separated names of ``spec``; one not in ``known`` raises ``ConfigError``
    ``"{option}: unknown {what} 'x' (did you mean 'y'?); {listing}"``."""
    names = [s.strip() for s in spec.split(",") if s.strip()]
    known = list(known)
    for name in names:
        if name not in known:
            raise ConfigError(f"{option}: unknown {what} {name!r}{did_you_mean(name, known)}; {listing}")
    return names


def check_preset(entry: str) -> None:
    """Raise ``ConfigError`` unless ``entry`` is a preset name or a valid config file (which is loaded)."""
    from segquant.config import as_quant_config
    from segquant.presets import PRESETS

    if entry in PRESETS:
        return
    if Path(entry).suffix.lower() in CONFIG_SUFFIXES:
        if not Path(entry).is_file():
            raise ConfigError(f"--presets: config file {entry!r} not found")
        as_quant_config(entry)  # a bad file raises its own ConfigError naming the key
        return
    raise ConfigError(f"--presets: unknown preset {entry!r}{did_you_mean(entry, PRESETS)}; "
                      f"presets: {', '.join(PRESETS)}, 'all', or a YAML config path")


def parse_presets(spec: str) -> list[str]:
    """``"all"`` or a comma-separated list of preset names / YAML paths, each checked (``check_preset``)."""
    from segquant.presets import PRESETS

    if spec.strip() == "all":
        return list(PRESETS)
    entries = [p.strip() for p in spec.split(",") if p.strip()]
    if not entries:
        raise ConfigError(f"--presets: {spec!r} names no preset")
    for entry in entries:
        check_preset(entry)
    return entries
