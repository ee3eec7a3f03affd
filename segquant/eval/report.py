"""Reports of the evaluation harness: Markdown + JSON results table, PNG image grid, error plot."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger(__name__)


def to_uint8_grid(images: torch.Tensor, nrow: int, pad: int = 1, pad_value: float = 0.5) -> np.ndarray:
    """Tile float images ``(N, C, H, W)`` in [0, 1] (C = 1 or 3) into a uint8 ``(rows·(H+pad), ..., C)`` array,
    ``nrow`` images per row."""
    images = images.detach().float().clamp(0, 1).cpu()
    n, c, h, w = images.shape
    rows = (n + nrow - 1) // nrow
    grid = torch.full((c, rows * (h + pad) + pad, nrow * (w + pad) + pad), pad_value)
    for i in range(n):
        r, col = divmod(i, nrow)
        grid[:, pad + r * (h + pad): pad + r * (h + pad) + h, pad + col * (w + pad): pad + col * (w + pad) + w] = images[i]
    return (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def save_grid(images: torch.Tensor, nrow: int, path: str | Path, scale: int = 1) -> Path:
    """Save images ``(N, C, H, W)`` in [0, 1] as one PNG grid, enlarged ``scale`` times (nearest)."""
    from PIL import Image

    arr = to_uint8_grid(images, nrow)
    img = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
    if scale != 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


# (key, header, format) of the results table, in order; missing keys are left out of the table.
COLUMNS = (
    ("config", "config", "{}"),
    ("granularity", "bits: granularity", "{}"),
    ("psnr", "PSNR dB ↑", "{:.2f}"),
    ("ssim", "SSIM ↑", "{:.4f}"),
    ("fid", "FID ↓", "{:.3f}"),
    ("kid", "KID ↓", "{:.4f}"),
    ("edge_f1", "edge F1 ↑", "{:.3f}"),
    ("class_acc", "class acc ↑", "{:.3f}"),
    ("cls_fd", "cls-FD ↓", "{:.3f}"),
    ("lpips", "LPIPS ↓", "{:.4f}"),
    ("clip_score", "CLIP ↑", "{:.2f}"),
    ("image_reward", "ImageReward ↑", "{:.3f}"),
    ("mean_step_error", "ε rel.err ↓", "{:.4f}"),
    ("quant_s", "quant s", "{:.1f}"),
    ("fit_s", "correction fit s", "{:.1f}"),
    ("strength", "correction strength", "{:g}"),
    ("quant_peak_mb", "quant peak MB (Δ)", "{:.0f}"),
    ("gen_s", "gen s", "{:.1f}"),
    ("gen_peak_mb", "gen peak MB (Δ)", "{:.0f}"),
    ("quantized_layers", "SegLinear layers", "{}"),
)


# FID/KID from fewer images than this per set are noisy and biased: marked as indicative.
INDICATIVE_BELOW = 300


def indicative_columns(result) -> tuple[str, ...]:
    """``("fid", "kid")`` when the result's image sets are too small for stable FID/KID, else ``()``."""
    n = result.settings.get("n_prompts")
    return ("fid", "kid") if n is not None and n < INDICATIVE_BELOW else ()


def result_notes(result) -> list[str]:
    """Notes that belong under a result's table: the real calibration, how FP8 x FP8 GEMMs were summed, and FID/KID
    caveats."""
    s = result.settings
    steps, recorded = s.get("num_inference_steps"), s.get("calib_steps_recorded")
    every = " (every step)" if recorded == steps else ""
    notes = [f"Calibration: {s.get('n_calib_prompts')} prompts × {recorded} of {steps} denoising steps recorded{every}."]
    if any(_fp8_by_fp8(r.get("granularity")) for r in result.rows):
        notes.append(FP8_NUMERICS_NOTES[s.get("fp8_numerics", "float32")])
    if any("fid" in r for r in result.rows):
        if indicative_columns(result):
            notes.append(f"FID/KID (†) from {s.get('n_prompts')} images per set are indicative only: they need a few hundred images "
                         "or more to be stable; compare presets within this table, not with published numbers.")
        notes.append("KID is the unbiased MMD² estimate: it can fall below 0 when the two sets are "
                     "indistinguishable at this sample size; such values are shown as ≤0 (raw value in results.json).")
    return notes


#: The note under a table with FP8 x FP8 rows, per ``fp8_numerics`` setting.
FP8_NUMERICS_NOTES = {
    "float32": "FP8 x FP8 GEMMs summed exactly in float32 (--fp8-numerics float32). Hopper's tensor cores sum them "
               "otherwise in the last bits, which makes each deployed image another, equally plausible sample; "
               "--fp8-numerics tensor-cores emulates their sums to the bit (slower on the CPU).",
    "tensor-cores": "FP8 x FP8 GEMMs summed as Hopper's tensor cores sum them, to the bit (--fp8-numerics "
                    "tensor-cores).",
}


def _fp8_by_fp8(granularity) -> bool:
    """Whether a row's granularity string (``"W fpe4m3 ..., A fpe4m3 ..."``) has FP8 weights and FP8 inputs."""
    return isinstance(granularity, str) and "W fpe4m3" in granularity and "A fpe4m3" in granularity


def _fmt(value, fmt: str) -> str:
    if value is None:
        return "—"
    if isinstance(value, float) and np.isnan(value):
        return "—"
    if isinstance(value, float) and np.isinf(value):
        return "inf"
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


def markdown_table(rows: list[dict], indicative: tuple[str, ...] = ()) -> str:
    """GitHub Markdown table of result rows (columns of ``COLUMNS`` present in any row); failed rows
    show their error. Columns in ``indicative`` get a ``†`` in the header; a negative KID shows as ``≤0``."""
    cols = [(k, h + " †" if k in indicative else h, f) for k, h, f in COLUMNS if any(k in r for r in rows)]
    lines = ["| " + " | ".join(c[1] for c in cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in rows:
        if "error" in r or "not_applicable" in r:
            what = f"failed: {r['error'][:200]}" if "error" in r else f"not applicable: {r['not_applicable']}"
            lines.append(f"| {r['config']} | {what} |" + " |" * (len(cols) - 2))
            continue
        cells = []
        for k, _, f in cols:
            cell = "≤0" if k == "kid" and isinstance(r.get(k), float) and r[k] < 0 else _fmt(r.get(k), f)
            delta = r.get(k.replace("_peak_mb", "_delta_mb")) if k.endswith("_peak_mb") else None
            if delta is not None and cell != "—":
                cell += f" (+{delta:.0f})"
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return None if np.isnan(v) else ("inf" if np.isinf(v) else v)
    if isinstance(value, np.integer):
        return int(value)
    return value


def result_json(result) -> dict:
    """Plain JSON-able dict of an ``EvalResult`` (NaN -> null, inf -> "inf")."""
    return _jsonable({"settings": result.settings, "rows": result.rows, "timesteps": result.timesteps,
                      "step_errors": result.errors, "prompts": result.prompts, "skipped": result.skipped})


def save_comparison_grid(result, path: str | Path, max_rows: int = 10) -> Path:
    """PNG: rows = prompts (first ``max_rows``), columns = the control image (ControlNet runs), FP and each preset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result.images)
    n = min(max_rows, len(result.prompts))
    fig, axes = plt.subplots(n, len(names), figsize=(1.1 * len(names) + 1.6, 1.1 * n + 0.4), squeeze=False)
    for j, name in enumerate(names):
        for i in range(n):
            ax = axes[i][j]
            img = result.images[name][i].permute(1, 2, 0).numpy()
            ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(name, fontsize=7)
            if j == 0:
                import textwrap

                label = "\n".join(textwrap.wrap(result.prompts[i], 18)[:3])
                ax.set_ylabel(label, fontsize=5, rotation=0, ha="right", va="center")
    fig.tight_layout(pad=0.3)
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def save_error_plot(result, path: str | Path, title: str = "") -> Path:
    """PNG: relative denoiser-output error vs denoising step (log scale), one line per preset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name, errs in result.errors.items():
        ax.plot(range(len(errs)), errs, marker="o", ms=3, lw=1, label=name)
    ax.set_xlabel("denoising step (0 = noisiest)")
    ax.set_ylabel("‖ε_q − ε_fp‖ / ‖ε_fp‖")
    ax.set_yscale("log")
    ax.grid(alpha=0.3, which="both")
    ax.set_title(title or "denoiser-output error per step (replayed on the FP trajectory)", fontsize=9)
    if result.errors:
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(result, folder: str | Path, title: str = "segquant evaluation") -> dict[str, Path]:
    """Write ``results.md``, ``results.json``, ``grid.png`` and ``step_error.png`` into ``folder``."""
    import json

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": folder / "results.json", "markdown": folder / "results.md",
             "grid": save_comparison_grid(result, folder / "grid.png"),
             "step_error": save_error_plot(result, folder / "step_error.png", title)}
    paths["json"].write_text(json.dumps(result_json(result), indent=2))
    paths["markdown"].write_text(markdown_section(result, title) + "\n")
    logger.info("report written to %s", folder)
    return paths


def markdown_section(result, title: str, image_prefix: str = "") -> str:
    """Markdown of one result: title, settings, table, skipped metrics, images."""
    s = result.settings
    lines = [f"## {title}", "",
             f"Denoiser `{s.get('denoiser_class')}` in `{s.get('pipeline')}`; {s.get('n_prompts')} prompts, "
             f"seed {s.get('seed')}, {s.get('num_inference_steps')} steps, guidance {s.get('guidance_scale')}. "
             "PSNR/SSIM/FID/KID/cls-FD compare each preset with the full-precision (fp) images; "
             "ε rel.err is the mean relative denoiser-output error on the fp trajectory.", "",
             markdown_table(result.rows, indicative_columns(result)), "", *result_notes(result), ""]
    if result.skipped:
        lines += ["Skipped: " + "; ".join(result.skipped), ""]
    lines += [f"![grid]({image_prefix}grid.png)", "", f"![step error]({image_prefix}step_error.png)"]
    return "\n".join(lines)
