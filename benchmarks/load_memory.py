"""Peak host memory of ``load_quantized(folder)`` (no model given) against the checkpoint size.

Builds a mid-size diffusers transformer on the CPU (SD3.5-medium width: 24 heads x 64, with ``--layers`` joint
blocks; or FLUX.1-dev's widths with ``--layers`` double- and ``--single-layers`` single-stream blocks; random
weights), quantizes it at W4A8 (``rtn_w4a8``: INT4 per-group(64)
packed weights, INT8 static inputs; the checkpoint layout is that of every W4A8 preset) on one small
calibration batch, saves it, then loads it in a fresh subprocess and reports its peak RSS
(``resource.getrusage``): before loading (after imports) and after ``load_quantized`` and a read of one
byte per KiB of every tensor (file-backed pages count once touched).

    python benchmarks/load_memory.py [--layers 6] [--dir /tmp/segquant_load_memory]
    python benchmarks/load_memory.py --model flux --layers 2 --single-layers 4   # FLUX.1-dev widths
    python benchmarks/load_memory.py --model flux --layers 19 --single-layers 38 --device cuda  # all of FLUX.1-dev

``--device cuda`` builds the model in bf16 on the GPU and quantizes it there (the load is still measured on
the CPU, in a fresh process): the full FLUX.1-dev does not fit a small machine's RAM in float32.

``--replicate L,S`` (FLUX) measures a checkpoint of ``L`` double- and ``S`` single-stream blocks made from the
one of ``--layers 1 --single-layers 1``: every tensor and plan entry of block 0 copied to each block. The
folder has the format, the tensor shapes and dtypes of a real checkpoint of that depth (the values repeat,
which neither the load's memory nor its time depends on), so all of FLUX.1-dev's W4A8 checkpoint can be
loaded on a machine that cannot hold its full-precision model:

    python benchmarks/load_memory.py --model flux --layers 1 --single-layers 1 --dtype bfloat16 --replicate 19,38
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's segquant, not an installed one

def _rss_mib() -> float:
    """Peak resident memory of this process so far (MiB): ``VmHWM`` where Linux has it (``ru_maxrss`` keeps
    the parent's peak across fork + exec, so a child started by a big parent would report the parent's)."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build_and_save(folder: Path, model_name: str, layers: int, single_layers: int, device: str,
                   dtype_name: str | None) -> None:
    import torch

    from segquant import quantize, save_quantized

    torch.manual_seed(0)
    dtype = getattr(torch, dtype_name) if dtype_name else torch.bfloat16 if device == "cuda" else torch.float32
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model, batch = (_flux(layers, single_layers) if model_name == "flux" else _sd3(layers))
    finally:
        torch.set_default_dtype(previous)
    started = time.perf_counter()
    quantized = quantize(model.eval(), [batch], "rtn_w4a8", tmp_device=device if device != "cpu" else None)
    print(f"quantized in {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    save_quantized(quantized, folder)


def _sd3(layers: int):
    import torch
    from diffusers import SD3Transformer2DModel

    model = SD3Transformer2DModel(sample_size=32, patch_size=2, in_channels=16, num_layers=layers,
                                  attention_head_dim=64, num_attention_heads=24, joint_attention_dim=4096,
                                  caption_projection_dim=1536, pooled_projection_dim=2048, out_channels=16,
                                  pos_embed_max_size=96, qk_norm="rms_norm")
    batch = {"hidden_states": torch.randn(1, 16, 32, 32), "encoder_hidden_states": torch.randn(1, 77, 4096),
             "pooled_projections": torch.randn(1, 2048), "timestep": torch.tensor([500.0])}
    return model, batch


def _flux(layers: int, single_layers: int):
    """FLUX.1-dev's widths (24 heads x 128, joint dim 4096, pooled 768, guidance embeds), fewer blocks."""
    import torch
    from diffusers import FluxTransformer2DModel

    model = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=layers, num_single_layers=single_layers,
                                   attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
                                   pooled_projection_dim=768, guidance_embeds=True)
    tokens, text = 16 * 16, 64
    batch = {"hidden_states": torch.randn(1, tokens, 64), "encoder_hidden_states": torch.randn(1, text, 4096),
             "pooled_projections": torch.randn(1, 768), "timestep": torch.tensor([0.5]),
             "img_ids": torch.zeros(tokens, 3), "txt_ids": torch.zeros(text, 3), "guidance": torch.tensor([3.5])}
    return model, batch


def replicate_blocks(src: Path, dst: Path, layers: int, single_layers: int) -> None:
    """Write to ``dst`` the checkpoint ``src`` (one double- and one single-stream FLUX block) with block 0 of
    each kind copied to ``layers`` / ``single_layers`` blocks: weights, plan entries, model config, manifest."""
    from safetensors.torch import load_file, save_file

    from segquant.checkpoint_files import MODEL_NAME, PLAN_NAME, WEIGHTS_NAME, write_manifest

    counts = {"transformer_blocks.": layers, "single_transformer_blocks.": single_layers}

    def copies(name: str) -> list[str]:
        for stem, count in counts.items():
            if name.startswith(stem + "0."):
                return [f"{stem}{i}.{name[len(stem) + 2:]}" for i in range(count)]
        return [name]

    dst.mkdir(parents=True, exist_ok=True)
    tensors = load_file(str(src / WEIGHTS_NAME))
    save_file({new: tensor.clone() for name, tensor in tensors.items() for new in copies(name)},
              str(dst / WEIGHTS_NAME), metadata={"format": "pt"})
    del tensors
    plan = json.loads((src / PLAN_NAME).read_text())
    plan["layers"] = [{**entry, "name": new} for entry in plan["layers"] for new in copies(entry["name"])]
    (dst / PLAN_NAME).write_text(json.dumps(plan, indent=1))
    model = json.loads((src / MODEL_NAME).read_text())
    model["config"].update(num_layers=layers, num_single_layers=single_layers)
    (dst / MODEL_NAME).write_text(json.dumps(model, indent=1))
    write_manifest(dst)


def load_child(folder: Path) -> dict:
    import torch

    import segquant
    import diffusers  # noqa: F401  (imports counted in the baseline, not in the load)

    before = _rss_mib()
    start = time.perf_counter()
    model = segquant.load_quantized(folder)
    seconds = time.perf_counter() - start
    # Tensors read from the file may stay backed by its pages until touched: read one byte of every KiB.
    for tensor in model.state_dict().values():
        tensor.detach().reshape(-1).view(torch.uint8)[::1024].sum()
    return {"rss_before_mib": round(before), "peak_rss_mib": round(_rss_mib()), "seconds": round(seconds, 2)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=["sd3", "flux"], default="sd3")
    parser.add_argument("--layers", type=int, default=6, help="(joint / double-stream) blocks")
    parser.add_argument("--single-layers", type=int, default=0, help="FLUX single-stream blocks")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/segquant_load_memory"))
    parser.add_argument("--device", default="cpu", help="where the model is built and quantized (cpu | cuda)")
    parser.add_argument("--dtype", default=None, help="the model's dtype (default: float32 on cpu, bfloat16 on cuda)")
    parser.add_argument("--replicate", default=None, help="L,S: measure a FLUX checkpoint of L double- and S "
                        "single-stream blocks made from this one's block 0 (see the module doc)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--build", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    shape = ["--model", args.model, "--layers", str(args.layers), "--single-layers", str(args.single_layers),
             "--dir", str(args.dir)]
    folder = args.dir / f"{args.model}_{args.layers}_{args.single_layers}_w4a8{'_' + args.dtype if args.dtype else ''}"
    if args.child:
        print(json.dumps(load_child(Path(args.child))))
        return
    if args.build:
        build_and_save(folder, args.model, args.layers, args.single_layers, args.device, args.dtype)
        return
    if not (folder / "segquant_manifest.json").is_file():
        subprocess.run([sys.executable, __file__, "--build", *shape, "--device", args.device,
                        *(["--dtype", args.dtype] if args.dtype else [])], check=True)
    blocks = f"{args.layers} + {args.single_layers}"
    if args.replicate:
        layers, single = (int(v) for v in args.replicate.split(","))
        started = time.perf_counter()
        replicated = folder.with_name(f"{folder.name}_replicated_{layers}_{single}")
        replicate_blocks(folder, replicated, layers, single)
        folder, blocks = replicated, f"{layers} + {single} (replicated)"
        print(f"replicated in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    size_mib = sum(f.stat().st_size for f in folder.iterdir()) / 2**20
    out = subprocess.run([sys.executable, __file__, "--child", str(folder)],
                         capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    r = json.loads(out)
    added = r["peak_rss_mib"] - r["rss_before_mib"]
    print("| model | blocks | checkpoint (MiB) | RSS before load (MiB) | peak RSS (MiB) | added by load (MiB) | "
          "added / checkpoint | peak / checkpoint | load time (s) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    print(f"| {args.model} | {blocks} | {size_mib:.0f} | {r['rss_before_mib']} | "
          f"{r['peak_rss_mib']} | {added} | {added / size_mib:.2f}x | {r['peak_rss_mib'] / size_mib:.2f}x | "
          f"{r['seconds']} |")


if __name__ == "__main__":
    main()
