"""How Hopper's FP8 GEMMs sum their products: the model of :mod:`segquant.kernels.fp8_accumulation` fitted to the
errors the GPU measured against the float32 twin (``simulate``, on the CPU) and checked bit for bit against the GPU's
kernels (``probe``, on a GPU).

Every FP8 GEMM of the gpu backend differs from the twin by a relative 6.8–6.9e-4 (cuBLASLt, CUTLASS row-wise and
the tiled Triton kernel), 8.8e-4 on some configs of the persistent TMA kernel, and 1.7–3.8e-3 with cuBLASLt's fast
accumulation, growing with K (runs 16–19); float32 sums in another order differ by ~3e-5 (the ``exact`` column).

``simulate`` draws each benchmarked layer's inputs as ``gemm_w8a8.py`` does (the layer's K, fewer rows and columns:
the relative error does not depend on them), computes candidate models and reports their relative error against the
twin beside what the GPU measured (read from ``gemm_w8a8.py``'s ``scaled_gemm.jsonl`` files):

    python benchmarks/fp8_accumulation.py simulate --out OUT \\
        --measured benchmarks/results/gpu_h100_2026-12-05_run19/fp8t/scaled_gemm.jsonl

``probe`` (a GPU; ``--smoke`` stands known models in for the GPU on the CPU) compares with a grid of models, bit for
bit, on random E4M3 codes (the benchmark's, and codes over the whole E4M3 range): ``torch._scaled_mm`` with unit
scales and a float32 output (cuBLASLt tensor-wise: the accumulator as it leaves the kernel), the same with fast
accumulation, row-wise (CUTLASS, bf16 output) and the Triton kernels through the op; then the tensor-wise call with
scales and a bias against candidate float32 epilogues on the accumulator it left; and a static FP8 layer as the gpu
backend runs it (folded scales, bias, bf16 output; per-tensor and per-channel weights) against every model and
epilogue: what a bitwise emulation of the FP8 layers needs. It saves the codes and the kernels' outputs of its
products up to K = 3072 (``probe_samples.pt``, ≈ 4 MB), so that ``fit`` can compare other models with them on the CPU:

    python benchmarks/fp8_accumulation.py fit --out OUT --samples PROBE_OUT/probe_samples.pt [--fit-rows 32]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))  # gemm_w8a8
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's segquant

import gemm_w8a8  # noqa: E402
from segquant.kernels.fp8_accumulation import HOPPER, HOPPER_FAST, Accumulation, tensor_core_sum  # noqa: E402
from segquant.kernels.gemm_reference import scaled_gemm_reference  # noqa: E402
from segquant.kernels.gpu.plan import _fp8_row_scales, quantize_input, static_fp8_gemm  # noqa: E402
from segquant.nn.spec import SegLinearSpec  # noqa: E402

#: the layers of ``gemm_w8a8.py`` whose FP8 errors runs 16–19 recorded (plain: one input segment, no DualScale)
SIMULATED_LAYERS = ("qkv_fused", "out_proj_plain", "ff_up", "ff_down_plain", "proj_out_plain", "sd35_qkv",
                    "sd35_ff_up", "sd35_ff_down")
#: measured column of ``scaled_gemm.jsonl`` -> the model that should reproduce it
MEASURED = {"rel_err_fast_accum": "fast", "rel_err_vs_twin": "promote_128", "rel_err_triton": "promote_128",
            "rel_err_tma": "promote per K tile: 256 or 128"}


# ----------------------------------------------------------------------------------------------------- simulate


def layer_sample(k: int, fmt_name: str, rows: int, columns: int, seed: int):
    """A ``fmt_name`` layer (``gemm_w8a8.FORMATS``) with ``k`` inputs, ``columns`` outputs, and ``rows`` of input,
    drawn as ``gemm_w8a8.py`` draws them, packed for the gpu backend -> (module, its quantized input: codes, scale,
    None)."""
    fmt, per_tensor_weight = gemm_w8a8.FORMATS[fmt_name]
    spec = SegLinearSpec(k, columns, (columns,), (k,), fmt, weight_dtype=fmt, weight_scale_columns=1)
    module = gemm_w8a8.random_module(spec, seed, per_tensor_weight)
    device = gemm_w8a8.DEVICE["name"]
    inputs = torch.randn(rows, k, generator=torch.Generator(device=device).manual_seed(seed + 1), device=device,
                         dtype=torch.bfloat16)
    return module, quantize_input(module, inputs)


def modelled_output(module, quantized, model: Accumulation | None) -> Tensor:
    """The layer's bf16 output with the sum of ``model`` (``None``: exact) and the GPU's float32 epilogue: the
    accumulator times the input scale and the weight scale, plus the bias."""
    codes, a_scale, _ = quantized
    a, b = codes[0], module.weight_codes
    acc = (a.double() @ b.double().T).float() if model is None else tensor_core_sum(a, b, model)
    return (acc * a_scale[0, :, :1] * module.weight_scale[:, :1].T + module.bias.float()).to(torch.bfloat16)


def measured_errors(paths: list[Path]) -> dict[tuple[str, str], list[float]]:
    """(layer, measured column) -> the values of the FP8 rows of ``gemm_w8a8.py``'s jsonl files."""
    found: dict[tuple[str, str], list[float]] = {}
    for path in paths:
        for line in path.read_text().splitlines():
            row = json.loads(line)
            if row.get("fmt", "").startswith("fp8"):
                for column in MEASURED:
                    if column in row:
                        found.setdefault((row["layer"], column), []).append(row[column])
    return found


def simulate(args) -> str:
    """The candidate models' relative errors against the twin per layer, beside the GPU's (markdown)."""
    models = {"exact": None, "fast": Accumulation(promote_every=None),
              "fast, 14 bits": Accumulation(fraction_bits=14, promote_every=None),
              "fast, sum truncated": Accumulation(promote_every=None, truncate_sum=True),
              "promote_128": Accumulation(), "promote_256": Accumulation(promote_every=256),
              "K&M fast": HOPPER_FAST, "K&M promote_128": HOPPER}
    measured = measured_errors(args.measured)
    lines = ["| layer (K) | " + " | ".join(models) + " | GPU measured: " + ", ".join(
                 f"{column} ({model})" for column, model in MEASURED.items()) + " |",
             "| --- " * (len(models) + 2) + "|"]
    for index, layer in enumerate(args.layers):
        k = gemm_w8a8.LAYERS[layer][1]
        module, quantized = layer_sample(k, "fp8", args.rows, args.columns, args.seed + 2 * index)
        twin = scaled_gemm_reference(*gemm_w8a8._gemm_args(module, quantized), torch.bfloat16)
        errors = {name: gemm_w8a8._rel(modelled_output(module, quantized, model), twin)
                  for name, model in models.items()}
        gpu = ", ".join(f"{sum(v) / len(v):.2e}" if (v := measured.get((layer, c))) else "—" for c in MEASURED)
        lines.append(f"| {layer} ({k}) | "
                     + " | ".join(f"{e:.2e}" for e in errors.values()) + f" | {gpu} |")
        print(lines[-1], flush=True)
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------------------- probe


def candidate_models(smoke: bool) -> list[Accumulation]:
    """The grid the probe compares every GPU kernel with (:data:`HOPPER` among them)."""
    if smoke:
        grid = itertools.product((8, 16), (13, 14), (None, 64, 128), (True,))
        return [Accumulation(g, f, p, t) for g, f, p, t in grid] + [HOPPER]
    magnitudes = [Accumulation(g, f, p, t) for g, f, p, t in itertools.product(
        (8, 16, 32), (12, 13, 14), (None, 32, 64, 128, 256), (True, False))]
    # aligned to the products' exponent sums, each group's sum truncated or not (Khattak and Mikaitis's H100 model)
    exponent_sums = [Accumulation(g, f, p, product_exponents=True, truncate_result=r) for g, f, p, r in
                     itertools.product((16, 32), (12, 13, 14), (None, 128, 256), (True, False))]
    return magnitudes + exponent_sums


def random_codes(kind: str, rows: int, k: int, generator: torch.Generator, device: str) -> Tensor:
    """``(rows, k)`` E4M3 codes: ``benchmark`` as ``gemm_w8a8.py``'s weights (``randn · 64``, clamped), ``wide`` every
    finite E4M3 value alike (subnormals and the largest exponents: the alignment's hard cases)."""
    if kind == "benchmark":
        values = torch.randn(rows, k, generator=generator, device=device).mul(64).clamp(-448, 448)
        return values.to(torch.float8_e4m3fn)
    bits = torch.randint(0, 256, (rows, k), generator=generator, device=device, dtype=torch.int32)
    bits = torch.where((bits & 0x7F) == 0x7F, bits - 1, bits)  # no NaN
    return bits.to(torch.uint8).view(torch.float8_e4m3fn)


def gpu_kernels(a: Tensor, b: Tensor) -> dict[str, Tensor]:
    """What the GPU computes for ``a`` ``(M, K)`` times ``b`` ``(N, K)``ᵀ with unit scales: float32 where the call
    allows it (the accumulator as it leaves the kernel), bf16 otherwise; a call that fails is reported and left out."""
    from segquant.kernels.gpu import ops
    one, k = torch.ones((), device=a.device), a.shape[1]
    columns = torch.zeros(k, dtype=torch.int32, device=a.device)
    op_args = (a[None], b, torch.ones(1, 1, 1, device=a.device), None, torch.ones(b.shape[0], 1, device=a.device),
               columns, columns, None, None, None, b.shape[0], 0, k, torch.float32)

    def on_triton(kernel: str) -> Tensor:
        with gemm_w8a8.pinned(kernel):
            return ops.gemm(*op_args)

    calls = {
        "cublaslt_tensorwise": lambda: torch._scaled_mm(a, b.T, one, one, out_dtype=torch.float32),
        "cublaslt_fast_accum": lambda: torch._scaled_mm(a, b.T, one, one, out_dtype=torch.float32,
                                                        use_fast_accum=True),
        "cutlass_rowwise_bf16": lambda: torch._scaled_mm(
            a, b.T, torch.ones(a.shape[0], 1, device=a.device), torch.ones(1, b.shape[0], device=a.device),
            out_dtype=torch.bfloat16),
        "triton_tiled": lambda: on_triton("tiled"),
        "triton_tma": lambda: on_triton("tma"),
    }
    outputs = {}
    for name, call in calls.items():
        try:
            outputs[name] = call()
        except Exception as error:  # a kernel that cannot take this call is reported, not fatal
            print(f"{name}: {type(error).__name__}: {error}", flush=True)
    return outputs


#: float32 epilogues a tensor-wise FP8 GEMM may apply to its accumulator ``acc`` ``(M, N)`` with the input and
#: weight scales ``sa`` / ``sb`` (0-dim float32) and the bias ``(N,)`` (a fused multiply-add rounds once: float64 here)
EPILOGUES = {
    "(acc·sa)·sb + bias": lambda acc, sa, sb, bias: acc * sa * sb + bias,
    "acc·(sa·sb) + bias": lambda acc, sa, sb, bias: acc * (sa * sb) + bias,
    "fma(acc, sa·sb, bias)": lambda acc, sa, sb, bias: (acc.double() * (sa * sb).double() + bias.double()).float(),
    "fma(acc·sa, sb, bias)": lambda acc, sa, sb, bias: ((acc * sa).double() * sb.double() + bias.double()).float(),
}


def scaled_call(a: Tensor, b: Tensor, sa: Tensor, sb: Tensor, bias: Tensor) -> Tensor:
    """cuBLASLt's tensor-wise FP8 GEMM with scales and a bias: a float32 output where the call takes one (every
    epilogue's rounding visible), else bf16 as the ``w8a8_fp8`` preset calls it."""
    try:
        return torch._scaled_mm(a, b.T, sa, sb, bias=bias.float(), out_dtype=torch.float32)
    except RuntimeError as error:
        print(f"tensor-wise FP8 with a float32 bias and output: {error}; bf16 instead", flush=True)
        return torch._scaled_mm(a, b.T, sa, sb, bias=bias, out_dtype=torch.bfloat16)


def stand_in_scaled_call(a: Tensor, b: Tensor, sa: Tensor, sb: Tensor, bias: Tensor) -> Tensor:
    """``--smoke``: a known epilogue on a known model's sum, in place of :func:`scaled_call`."""
    return EPILOGUES["acc·(sa·sb) + bias"](tensor_core_sum(a, b, Accumulation(16, 13, 64)), sa, sb, bias.float())


def epilogue_scores(acc: Tensor, a: Tensor, b: Tensor, call, generator: torch.Generator) -> list[tuple[float, str]]:
    """How many elements of ``call``'s output (random scales, a bf16 bias) each of :data:`EPILOGUES` applied to
    ``acc`` (the same product's float32 accumulator, unit scales) gives in the output's dtype, best first."""
    sa = torch.tensor(0.03, device=a.device)
    sb = torch.tensor(0.0015, device=a.device)
    bias = torch.randn(b.shape[0], generator=generator, device=a.device).to(torch.bfloat16)
    out = call(a, b, sa, sb, bias)
    scores = [((fn(acc, sa, sb, bias.float()).to(out.dtype) == out).double().mean().item(), name)
              for name, fn in EPILOGUES.items()]
    return sorted(scores, reverse=True)


def stand_in_deployed(module, codes: Tensor, dtype: torch.dtype) -> Tensor:
    """``--smoke``: a known model and epilogue in place of ``plan.static_fp8_gemm``."""
    sa, sb = _fp8_row_scales(module, codes.shape[1]), module.gpu_fp8_columns
    acc = tensor_core_sum(codes[0], module.weight_codes, Accumulation(16, 13, 64))
    return EPILOGUES["acc·(sa·sb) + bias"](acc, sa, sb, module.bias.float()).to(dtype)


def deployed_layer_scores(fmt_name: str, models: list[Accumulation], args) -> list[tuple[float, str]]:
    """A static FP8 layer as the gpu backend runs it (``plan.static_fp8_gemm``: folded scales, bias, bf16 output)
    against every model of the grid with every epilogue, and against the twin: equal elements, best first."""
    module, quantized = layer_sample(args.deployed_k, fmt_name, args.probe_rows, args.probe_columns, args.seed)
    codes = quantized[0]
    out = (stand_in_deployed if args.smoke else static_fp8_gemm)(module, codes, torch.bfloat16)
    sa, sb = _fp8_row_scales(module, codes.shape[1]), module.gpu_fp8_columns
    twin = scaled_gemm_reference(*gemm_w8a8._gemm_args(module, quantized), torch.bfloat16)
    scores = [((twin == out).double().mean().item(), "the twin (float32 product of dequantized operands)")]
    for model in models:
        acc = tensor_core_sum(codes[0], module.weight_codes, model)
        scores += [((fn(acc, sa, sb, module.bias.float()).to(out.dtype) == out).double().mean().item(),
                    f"{model.name}, {name}") for name, fn in EPILOGUES.items()]
    return sorted(scores, reverse=True)


def stand_in_kernels(a: Tensor, b: Tensor) -> dict[str, Tensor]:
    """``--smoke``: two known models in the GPU's place, so that the probe must name them."""
    return {"model_g16_f13_promote_64": tensor_core_sum(a, b, Accumulation(16, 13, 64)),
            "model_g8_f14_fast_bf16": tensor_core_sum(a, b, Accumulation(8, 14, None)).to(torch.bfloat16)}


#: Probe rows whose codes and GPU outputs are saved for ``fit`` (K up to this; the longest K is left out for size)
SAMPLED_MAX_K = 3072
PROBE_HEADER = ["| kernel | codes | K | exact sum: equal elements | best models (equal elements) |", "| --- " * 5 + "|"]


def kernel_scores(kind: str, k: int, a: Tensor, b: Tensor, observed: dict[str, Tensor],
                  modelled: dict[Accumulation, Tensor]) -> tuple[list[dict], list[str]]:
    """For each observed kernel's output on ``a`` ``(M, K)`` x ``b`` ``(N, K)``: the share of its elements that the
    float32 sum of the exact products and each modelled sum give, best models first (JSON rows, markdown lines)."""
    exact = (a.double() @ b.double().T).float()
    results, lines = [], []
    for kernel, out in observed.items():
        def equal(candidate: Tensor) -> float:
            return (candidate.to(out.dtype) == out).double().mean().item()
        scores = sorted(((equal(value), model.name) for model, value in modelled.items()), reverse=True)
        results.append(dict(kernel=kernel, codes=kind, k=k, exact_equal=equal(exact), best=scores[:5]))
        best = ", ".join(f"{name} ({score:.6f})" for score, name in scores[:3])
        lines.append(f"| {kernel} | {kind} | {k} | {equal(exact):.6f} | {best} |")
        print(lines[-1], flush=True)
    return results, lines


def fit(args) -> str:
    """``probe``'s comparison on the CPU, from the codes and GPU outputs a probe saved (``probe_samples``), for the
    first ``--fit-rows`` rows: models can be tried without a GPU."""
    samples = torch.load(args.samples, weights_only=True)
    models = candidate_models(args.smoke)
    lines, results = list(PROBE_HEADER), []
    for name in sorted(key for key in samples if key.endswith("/a")):
        kind, k = name.split("/")[:2]
        outputs = f"{kind}/{k}/out/"
        a = samples[name][:args.fit_rows].view(torch.float8_e4m3fn)
        b = samples[f"{kind}/{k}/b"].view(torch.float8_e4m3fn)
        observed = {key[len(outputs):]: value[:args.fit_rows] for key, value in samples.items()
                    if key.startswith(outputs)}
        modelled = {model: tensor_core_sum(a, b, model) for model in models}
        rows, new_lines = kernel_scores(kind, int(k), a, b, observed, modelled)
        results += rows
        lines += new_lines
    (args.out / "fit.json").write_text(json.dumps(results, indent=1))
    return "\n".join(lines)


def probe(args) -> str:
    """Per observed kernel and input kind: the models of the grid that equal it on the most elements. The codes and
    outputs of the rows up to :data:`SAMPLED_MAX_K` go to ``probe_samples.pt`` (for ``fit``)."""
    device = "cpu" if args.smoke else "cuda"
    generator = torch.Generator(device=device).manual_seed(args.seed)
    models = candidate_models(args.smoke)
    lines, results, samples = list(PROBE_HEADER), [], {}
    for kind, k in itertools.product(("benchmark", "wide"), args.probe_k):
        a = random_codes(kind, args.probe_rows, k, generator, device)
        b = random_codes(kind, args.probe_columns, k, generator, device)
        observed = (stand_in_kernels if args.smoke else gpu_kernels)(a, b)
        if k <= SAMPLED_MAX_K:
            samples.update({f"{kind}/{k}/a": a.view(torch.uint8).cpu(), f"{kind}/{k}/b": b.view(torch.uint8).cpu()})
            samples.update({f"{kind}/{k}/out/{kernel}": out.cpu() for kernel, out in observed.items()})
        modelled = {model: tensor_core_sum(a, b, model) for model in models}
        same = torch.equal(modelled[HOPPER].cpu(), tensor_core_sum(a.cpu(), b.cpu(), HOPPER))
        print(f"{kind} K={k}: the model on {device} (CUDA: its Triton kernel) equals the CPU loop: {same}", flush=True)
        rows, new_lines = kernel_scores(kind, k, a, b, observed, modelled)
        results += rows
        lines += new_lines
        unit_accumulator = "model_g16_f13_promote_64" if args.smoke else "cublaslt_tensorwise"
        if unit_accumulator in observed:  # the tensor-wise call's epilogue, on the accumulator it left
            call = stand_in_scaled_call if args.smoke else scaled_call
            scores = epilogue_scores(observed[unit_accumulator], a, b, call, generator)
            results.append(dict(kernel="epilogue, cuBLASLt tensor-wise", codes=kind, k=k, best=scores))
            lines.append(f"| epilogue, cuBLASLt tensor-wise | {kind} | {k} | — | "
                         + ", ".join(f"{name} ({score:.6f})" for score, name in scores) + " |")
            print(lines[-1], flush=True)
    for fmt_name in ("fp8_tensor", "fp8"):  # per-tensor weights (cuBLASLt) and per-channel ones (row-wise CUTLASS)
        scores = deployed_layer_scores(fmt_name, models, args)
        twin = next(score for score, name in scores if name.startswith("the twin"))
        results.append(dict(kernel=f"deployed static layer, {fmt_name}", codes="benchmark", k=args.deployed_k,
                            twin_equal=twin, best=scores[:5]))
        lines.append(f"| deployed static layer, {fmt_name} | benchmark | {args.deployed_k} | twin {twin:.6f} | "
                     + ", ".join(f"{name} ({score:.6f})" for score, name in scores[:3]) + " |")
        print(lines[-1], flush=True)
    (args.out / "probe.json").write_text(json.dumps(results, indent=1))
    torch.save(samples, args.out / "probe_samples.pt")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("simulate", "probe", "fit"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--measured", default="", help="comma-separated scaled_gemm.jsonl files of gemm_w8a8.py")
    parser.add_argument("--layers", default=",".join(SIMULATED_LAYERS))
    parser.add_argument("--rows", type=int, default=384)
    parser.add_argument("--columns", type=int, default=512)
    parser.add_argument("--probe-rows", type=int, default=128)
    parser.add_argument("--probe-columns", type=int, default=256)
    parser.add_argument("--deployed-k", type=int, default=3072, help="probe: K of the deployed-layer comparison")
    parser.add_argument("--probe-k", default="256,3072,12288", help="probe: K of each random product")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--samples", type=Path, help="fit: a probe's probe_samples.pt")
    parser.add_argument("--fit-rows", type=int, default=32, help="fit: rows of each saved product to compare")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU, to test this script")
    args = parser.parse_args()
    args.layers = args.layers.split(",")
    args.measured = [Path(p) for p in args.measured.split(",") if p]
    args.probe_k = [int(k) for k in args.probe_k.split(",")]
    if args.smoke or args.mode != "probe":
        gemm_w8a8.DEVICE["name"] = "cpu"
    if args.smoke:
        gemm_w8a8.LAYERS.update(gemm_w8a8.SMOKE_LAYERS)
        args.layers, args.rows, args.columns, args.probe_rows, args.probe_columns = ["plain", "dual"], 8, 16, 8, 16
        args.probe_k, args.deployed_k = [64, 192], 192
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    table = {"simulate": simulate, "probe": probe, "fit": fit}[args.mode](args)
    device = torch.cuda.get_device_name() if args.mode == "probe" and not args.smoke else "cpu"
    header = (f"{args.mode} on {device}, torch {torch.__version__}, "
              f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {time.time() - started:.0f} s; "
              f"{json.dumps({k: v for k, v in vars(args).items() if k not in ('out', 'measured')}, default=str)}")
    (args.out / f"{args.mode}.md").write_text(header + "\n\n" + table + "\n")
    print(header)


if __name__ == "__main__":
    main()
