"""Demo-model image quality with the emulated and the GPU backend, side by side (issues 11 and 12: image PSNR
against full precision identical within 0.1 dB between the two backends).

The demo's text encoder (all-MiniLM-L6-v2, from a pip package) is not installed on the GPU machine here, so
this runs in two steps; the prompt embeddings are the encoder's own float32 outputs, looked up by prompt:

    python benchmarks/demo_backends.py embed --out gpu_inputs/demo_prompts.safetensors   # where the encoder is
    python benchmarks/demo_backends.py run --embeddings gpu_inputs/demo_prompts.safetensors --out DIR
    # or, on the device machine (carry gpu_inputs/): OUT=... bash benchmarks/gpu_session.sh demo_backends

``run`` is ``segquant demo`` (the same prompts, seeds, calibration and metrics; ``--per-class`` / ``--steps``
as given) on ``--device``, with each preset twice in one harness call: as it is (backend ``emulated``) and
with ``backend: gpu``, so both quantize from the same calibration set and start from the same noise. It
writes each model's usual report into ``DIR/<model>`` (``DIR/README.md`` is the last model's) and prints, as each
model finishes, per preset PSNR / SSIM of both backends and their difference. ``--mock-gpu`` (for a CPU check of
this script) runs the GPU backend's layout with the op's pure-torch twin instead of the Triton kernels.
``--fp8-numerics tensor-cores`` (``segquant demo``'s option) runs the emulated rows with the model of the tensor
cores' FP8 sum (``segquant.kernels.fp8_accumulation.HOPPER``), the GPU's to the bit: FP8 presets then give identical
images on both backends, as INT8 ones do (BENCHMARKS.md run 21).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's segquant

PRESETS = ("w8a8", "w8a8_fast", "w4a8", "w4a8_two_level", "w4a16")


def demo_settings(per_class: int, steps: int, models: list[str], presets: list, seed: int = 0,
                  fp8_numerics: str = "float32") -> dict:
    """``segquant demo``'s settings with these sizes, seed and FP8 numerics (defaults of its parser otherwise)."""
    from segquant.cli import build_parser
    from segquant.demo.cli import demo_settings as settings_of

    args = build_parser().parse_args(["demo", "--per-class", str(per_class), "--steps", str(steps), "--no-fid",
                                      "--seed", str(seed), "--fp8-numerics", fp8_numerics])
    return {**settings_of(args), "models": models, "presets": presets}


def needed_prompts(settings: dict) -> list[str]:
    """Every prompt the run encodes: evaluation and calibration prompts, and the empty negative prompt."""
    from segquant.demo.cli import demo_prompts

    prompts, _labels, calib = demo_prompts(settings)
    return sorted(set(prompts) | set(calib) | {""})


def embed(out: Path, settings: dict) -> None:
    from safetensors.torch import save_file

    from segquant.demo.text_encoder import encode_prompts, load_text_encoder

    prompts = needed_prompts(settings)
    states, pooled = encode_prompts(*load_text_encoder(), prompts)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({"states": states.contiguous(), "pooled": pooled.contiguous()}, str(out),
              metadata={"prompts": json.dumps(prompts)})
    print(f"{len(prompts)} prompts -> {out}")


def lookup_encoder(path: Path):
    """A replacement for ``SegQuantDemoPipeline.encode_prompt`` that reads the saved embeddings."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        index = {p: i for i, p in enumerate(json.loads(f.metadata()["prompts"]))}
        states, pooled = f.get_tensor("states"), f.get_tensor("pooled")

    def encode_prompt(pipe, prompt, num_images_per_prompt: int = 1):
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        missing = [p for p in prompts if p not in index]
        if missing:
            raise KeyError(f"{path}: no embedding for {missing[:3]}; re-run `embed` with the same settings")
        rows = torch.tensor([index[p] for p in prompts])
        device = pipe.denoiser.device
        return (states[rows].repeat_interleave(num_images_per_prompt, 0).to(device),
                pooled[rows].repeat_interleave(num_images_per_prompt, 0).to(device))

    return encode_prompt


#: Layers the GPU kernels refuse (all six patterns split the UNet's 32-wide time-embedding input into
#: 16 + 16, below the kernels' 32-channel K tile): they stay emulated in the ``@gpu`` rows.
EMULATED_LAYERS = {"time_embedding.linear_1": {"backend": "emulated"}}


def preset_pairs(names: list[str]) -> list[tuple[str, dict]]:
    """Each preset as it is and with ``backend: gpu`` (except :data:`EMULATED_LAYERS`)."""
    from segquant.presets import preset_dict

    pairs = []
    for name in names:
        config = preset_dict(name)
        gpu = {**config, "default": {**config["default"], "backend": "gpu"}, **EMULATED_LAYERS}
        pairs += [(name, config), (f"{name}@gpu", gpu)]
    return pairs


def run(args: argparse.Namespace, settings: dict) -> None:
    import segquant.demo.cli as demo_cli
    from segquant.demo.pipeline import SegQuantDemoPipeline

    load = demo_cli._load
    patches = [mock.patch("segquant.demo.pipeline._text_encoder", return_value=(None, None)),
               mock.patch.object(SegQuantDemoPipeline, "encode_prompt", lookup_encoder(args.embeddings)),
               mock.patch.object(demo_cli, "_load", lambda *a: load(*a).to(args.device))]
    if args.mock_gpu:
        patches.append(mock.patch("segquant.kernels.gpu.backend._device_problem", return_value=None))
    print(f"device {torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu'}, torch {torch.__version__}, "
          f"{float32_matmul_mode()}")
    print("| model | preset | PSNR emulated | PSNR gpu | Δ dB | Δ std. error dB | images with equal PSNR | SSIM emulated "
          "| SSIM gpu | error | model s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |", flush=True)
    table = []
    with contextlib.ExitStack() as stack:
        for patch in patches:
            stack.enter_context(patch)
        for model in settings["models"]:  # one at a time: a run cut by its time limit keeps the models done
            started = time.perf_counter()
            results = demo_cli.evaluate_demo_models({**settings, "models": [model]}, args.out, progress=False)
            seconds = round(time.perf_counter() - started)  # the model's whole harness call: what a time limit must fit
            table += [{**row, "model_seconds": seconds} for row in compare(results, args.presets)]
            (Path(args.out) / "backends.json").write_text(json.dumps(table, indent=1))
            for r in table[-len(args.presets):]:
                print(f"| {r['model']} | {r['preset']} | {r['psnr_emulated']} | {r['psnr_gpu']} | {r['delta_db']} | "
                      f"{r['delta_se_db']} | {r['equal_images']} | {r['ssim_emulated']} | {r['ssim_gpu']} | "
                      f"{r['error']} | {r['model_seconds']} |", flush=True)


def float32_matmul_mode() -> str:
    """How float32 products run here (the emulated backend's and the full-precision model's): TF32 rounds their
    operands to 10 mantissa bits, an error the integer GEMM of the gpu backend does not have."""
    return (f"float32 matmul precision {torch.get_float32_matmul_precision()!r}, cuBLAS TF32 "
            f"{torch.backends.cuda.matmul.allow_tf32}, cuDNN TF32 {torch.backends.cudnn.allow_tf32}")


def compare(results: dict, presets: list[str]) -> list[dict]:
    """Per model and preset: both backends' PSNR / SSIM and the difference (or the row's error)."""
    table = []
    for model, result in results.items():
        rows = {row["config"]: row for row in result.rows}
        for name in presets:
            emul, gpu = rows.get(name, {}), rows.get(f"{name}@gpu", {})
            both = "psnr" in emul and "psnr" in gpu
            table.append({"model": model, "preset": name,
                          "psnr_emulated": round(emul["psnr"], 3) if "psnr" in emul else None,
                          "psnr_gpu": round(gpu["psnr"], 3) if "psnr" in gpu else None,
                          "delta_db": round(gpu["psnr"] - emul["psnr"], 3) if both else None,
                          "delta_se_db": paired_standard_error(emul, gpu) if both else None,
                          "equal_images": equal_images(emul, gpu),
                          "ssim_emulated": round(emul["ssim"], 4) if "ssim" in emul else None,
                          "ssim_gpu": round(gpu["ssim"], 4) if "ssim" in gpu else None,
                          "error": (emul.get("error") or gpu.get("error") or "")[:200]})
    return table


def equal_images(emul: dict, gpu: dict) -> str | None:
    """``"k/N"``: images whose PSNR is the same float on both backends (the same image, in practice: what INT8 x
    INT8 layers give, whose emulated products are the kernels' to the bit)."""
    a, b = emul.get("psnr_per_image"), gpu.get("psnr_per_image")
    if not a or not b or len(a) != len(b):
        return None
    return f"{sum(x == y for x, y in zip(a, b))}/{len(a)}"


def paired_standard_error(emul: dict, gpu: dict) -> float | None:
    """Standard error of the mean PSNR difference over the same prompts and seeds (``std(Δᵢ) / √N``): how much
    of ``delta_db`` sampling alone explains (rounding flips send single images either way)."""
    a, b = emul.get("psnr_per_image"), gpu.get("psnr_per_image")
    if not a or not b or len(a) != len(b) or len(a) < 2:
        return None
    return round(paired_difference(a, b)[1], 3)


def paired_difference(a: list[float], b: list[float]) -> tuple[float, float]:
    """Mean of ``bᵢ − aᵢ`` over paired per-image values (same prompts and seeds) and its standard error
    (``std(Δᵢ) / √N``; at least two pairs)."""
    delta = [y - x for x, y in zip(a, b, strict=True)]
    return statistics.mean(delta), statistics.stdev(delta) / len(delta) ** 0.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=["embed", "run"])
    parser.add_argument("--out", required=True, help="embed: the .safetensors file; run: the report folder")
    parser.add_argument("--embeddings", type=Path, help="run: the file written by embed")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", default="mmdit,flux,unet")
    parser.add_argument("--presets", default=",".join(PRESETS))
    parser.add_argument("--per-class", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0, help="the demo's seed (prompts, noise); embed and run alike")
    parser.add_argument("--mock-gpu", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--fp8-numerics", choices=["float32", "tensor-cores"], default="float32",
                        help="how the emulated rows sum FP8 products (module doc)")
    args = parser.parse_args()
    args.presets = args.presets.split(",")
    settings = demo_settings(args.per_class, args.steps, args.models.split(","), preset_pairs(args.presets),
                             args.seed, args.fp8_numerics)
    if args.step == "embed":
        embed(Path(args.out), settings)
    else:
        run(args, settings)


if __name__ == "__main__":
    main()
