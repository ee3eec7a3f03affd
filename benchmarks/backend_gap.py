"""Where the W8A8 demo PSNR gap between the emulated and the GPU backend comes from (issue 11; BENCHMARKS.md runs
10-11: the GPU 0.3-0.4 dB closer to full precision on FLUX and the UNet, deterministic, not TF32).

On one demo model and preset, with ``segquant demo``'s calibration set (the harness's own loader), this quantizes
the denoiser twice, as ``demo_backends.py`` does (the preset as it is, and with ``backend: gpu``), and answers:

1. Are the two quantized models the same apart from the backend? (every tensor of both state dicts compared)
2. Does the emulated model switched to the GPU backend (``set_backend``) compute what the GPU-quantized one does?
3. Which layers differ most between the backends, each on its own input captured from the emulated model's forward
   on calibration batches (relative error, with the layer's pattern: segments, DualScale, per-token inputs)?
4. How far apart are the two denoisers' outputs, per calibration batch?

    python benchmarks/demo_backends.py embed --out gpu_inputs/demo_prompts.safetensors --per-class 6  # where the encoder is
    python benchmarks/backend_gap.py --model flux --preset w8a8 --embeddings gpu_inputs/demo_prompts.safetensors \
        --device cuda --json gap.json
    python benchmarks/backend_gap.py --model flux --mock-gpu     # a CPU check of this script (the op's torch twin)
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import sys
from pathlib import Path
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # demo_backends
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's segquant

from demo_backends import demo_settings, lookup_encoder, preset_pairs  # noqa: E402


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖ in float64."""
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def state_differences(a: torch.nn.Module, b: torch.nn.Module) -> dict:
    """Tensors of ``a`` and ``b`` that differ (name -> relative difference), and names only one of them has."""
    sa, sb = a.state_dict(), b.state_dict()
    differ = {name: relative(sb[name], sa[name]) for name in sa.keys() & sb.keys()
              if not torch.equal(sa[name], sb[name])}
    return {"tensors": len(sa), "differ": len(differ), "largest": sorted(differ.items(), key=lambda kv: -kv[1])[:10],
            "only_emulated": sorted(sa.keys() - sb.keys())[:10], "only_gpu": sorted(sb.keys() - sa.keys())[:10]}


def layer_inputs(model: torch.nn.Module, batches: list) -> dict[str, list[torch.Tensor]]:
    """The input of every call of each SegLinear of ``model`` over ``batches`` (name -> inputs)."""
    from segquant.calibration import run_batch
    from segquant.kernels.backend import seglinear_modules

    inputs: dict[str, list[torch.Tensor]] = {}
    hooks = [module.register_forward_pre_hook(lambda _m, args, name=name: inputs.setdefault(name, []).append(args[0]))
             for name, module in seglinear_modules(model)]
    try:
        with torch.inference_mode():
            for batch in batches:
                run_batch(model, batch)
    finally:
        for hook in hooks:
            hook.remove()
    return inputs


def layer_gaps(emulated: torch.nn.Module, gpu: torch.nn.Module, batches: list) -> list[dict]:
    """Per SegLinear: relative error of the GPU layer against the emulated one on the emulated forward's inputs
    (the largest over the calls), with what the layer is; largest first."""
    rows = []
    with torch.inference_mode():
        for name, xs in layer_inputs(emulated, batches).items():
            layer_e, layer_g = emulated.get_submodule(name), gpu.get_submodule(name)
            worst = max(relative(layer_g(x), layer_e(x)) for x in xs)
            rows.append({"layer": name, "rel_err": worst, "rows": int(xs[0].numel() // xs[0].shape[-1]),
                         "spec": layer_e.spec.describe()})
    return sorted(rows, key=lambda row: -row["rel_err"])


def output_gaps(a: torch.nn.Module, b: torch.nn.Module, batches: list) -> list[float]:
    from segquant.calibration import run_batch

    with torch.inference_mode():
        return [relative(run_batch(b, batch)[0], run_batch(a, batch)[0]) for batch in batches]


def diagnose(opts: argparse.Namespace) -> dict:
    from segquant import quantize
    from segquant.demo.cli import demo_eval_config, demo_prompts
    from segquant.demo.pipeline import load_demo_pipeline
    from segquant.eval.harness import calibration_loader
    from segquant.kernels.backend import set_backend
    from segquant.pipeline.glue import get_denoiser

    settings = demo_settings(opts.per_class, opts.steps, [opts.model], [opts.preset])
    prompts, labels, calib = demo_prompts(settings)
    pipe = load_demo_pipeline(opts.model).to(opts.device)
    name, fp = get_denoiser(pipe, None)
    loader = list(calibration_loader(pipe, name, demo_eval_config(settings, prompts, labels, calib), progress=False))
    (_, emulated_config), (_, gpu_config) = preset_pairs([opts.preset])
    emulated = quantize(copy.deepcopy(fp), loader, emulated_config)
    gpu = quantize(copy.deepcopy(fp), loader, gpu_config)
    switched = set_backend(copy.deepcopy(emulated), "gpu", layers=[n for n, m in gpu.named_modules()
                                                                    if getattr(m, "backend_name", None) == "gpu"])
    checked = loader[: opts.batches]
    layers = layer_gaps(emulated, gpu, checked)
    return {"model": opts.model, "preset": opts.preset, "device": str(opts.device), "calibration_batches": len(loader),
            "states": state_differences(emulated, gpu),
            "output_rel_err_gpu_vs_emulated": output_gaps(emulated, gpu, checked),
            "output_rel_err_switched_vs_gpu": output_gaps(gpu, switched, checked),
            "output_rel_err_fp_vs_emulated": output_gaps(emulated, fp, checked),
            "layers_top": layers[:15], "layer_rel_err_median": layers[len(layers) // 2]["rel_err"],
            "layers": len(layers)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="flux", choices=["mmdit", "flux", "unet"])
    parser.add_argument("--preset", default="w8a8")
    parser.add_argument("--per-class", type=int, default=6)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batches", type=int, default=4, help="calibration batches the errors are measured on")
    parser.add_argument("--embeddings", type=Path, default=None, help="prompt embeddings (demo_backends.py embed)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--mock-gpu", action="store_true", help="the GPU backend's layout with the op's torch twin")
    parser.add_argument("--json", type=Path, default=None)
    opts = parser.parse_args()
    with contextlib.ExitStack() as stack:
        if opts.embeddings is not None:
            from segquant.demo.pipeline import SegQuantDemoPipeline

            stack.enter_context(mock.patch("segquant.demo.pipeline._text_encoder", return_value=(None, None)))
            stack.enter_context(mock.patch.object(SegQuantDemoPipeline, "encode_prompt",
                                                  lookup_encoder(opts.embeddings)))
        if opts.mock_gpu:
            stack.enter_context(mock.patch("segquant.kernels.gpu.backend._device_problem", return_value=None))
        result = diagnose(opts)
    text = json.dumps(result, indent=1)
    print(text)
    if opts.json:
        opts.json.write_text(text)


if __name__ == "__main__":
    main()
