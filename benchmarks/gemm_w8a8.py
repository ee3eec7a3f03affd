"""GEMM-level benchmark of the "gpu" SegLinear backend at FLUX.1-dev shapes (activation quantization included).

For every layer and format (FP8 E4M3 with per-channel weight scales, ``fp8_tensor``: FP8 E4M3 with one weight scale
per tensor as the ``w8a8_fp8`` preset writes it, INT8) it times, on random data, in one process:
bf16 ``F.linear`` (torch.mm) and its ``torch.compile``; the gpu backend's forward (quantize + W8A8 GEMM) in
eager and under ``torch.compile``; the GEMM alone on pre-quantized codes as routed (``gemm_only_us``), on the
tiled Triton kernel alone (``gemm_triton_us``), on the persistent TMA kernel alone (``gemm_tma_us``) and on its
variants with the last partial wave split along K (``gemm_tma_split_tail_us``) or in halves along N
(``gemm_tma_halves_tail_us``), and, INT8 on sm_90, on the Gluon kernels
(``gemm_wgmma_us``: one tensor-core step in flight; ``gemm_wgmma_tile_scaled_us``: per-K-tile scales rescaled while the
next MMA runs), where the layer fits them; plain FP8 layers also with cuBLASLt's fast accumulation
(``gemm_fast_accum_us``) and with one scale per tensor (``gemm_tensorwise_us``, a diagnostic: one input, no bias);
``fp8_tensor`` layers also on the row-wise call (``gemm_rowwise_us``) and, plain ones, on the routed call without its
bias (``gemm_no_bias_us``); bf16 ``torch.mm`` without the bias too (``bf16_mm_no_bias_us``, the issue's baseline
taken literally); the host's time per routed call and per bf16 call, issued without a CUDA graph
(``host_us``, ``bf16_host_us``: what a forward without a graph pays where the host is the slower side, Triton
launches replayed as the library runs them; with
``--host-profile`` also where it goes, ``host_profile_<layer>_<fmt>.txt``), and for the custom op's routes the same
with one layer of the call path taken away at a time (:func:`host_breakdown`); and checks the output against the
pure-torch twin. Prints a table
last and writes ``scaled_gemm.md`` / ``.json`` to ``--out``.

    python benchmarks/gemm_w8a8.py --out /tmp/bench [--layers ff_up,ff_down_dual] [--compile-layers ff_up]

``--smoke`` runs tiny shapes on the CPU (the op's CPU kernel is the twin) to check the script itself.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import pstats
import time
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F
import triton

from segquant.enums import DType
from segquant.kernels.gemm_reference import scaled_gemm_reference
from segquant.kernels.gpu import ops
from segquant.kernels.gpu.backend import GpuBackend
from segquant.kernels.gpu.plan import quantize_input, static_fp8_fits, static_fp8_gemm, tensor_wise_fp8
from segquant.nn.seglinear import SegLinear
from segquant.nn.spec import SegLinearSpec

PEAK_8BIT = 1979.0  # dense FP8 / INT8 TFLOP/s of an H100/H200 SXM
TOKENS = 4096 + 512
SD35_TOKENS = 2 * 4096
# name: (M, K, N, input segments, output segments, dual_scale, smooth)
LAYERS = {
    "qkv_fused": (TOKENS, 3072, 9216, (3072,), (9216,), False, False),
    "out_proj_plain": (TOKENS, 3072, 3072, (3072,), (3072,), False, False),
    "out_proj_heads": (TOKENS, 3072, 3072, (128,) * 24, (3072,), False, False),
    "ff_up": (TOKENS, 3072, 12288, (3072,), (12288,), False, False),
    "ff_down_plain": (TOKENS, 12288, 3072, (12288,), (3072,), False, False),
    "ff_down_dual": (TOKENS, 12288, 3072, (12288,), (3072,), True, False),
    "proj_out_plain": (TOKENS, 15360, 3072, (15360,), (3072,), False, False),
    "proj_out_cat": (TOKENS, 15360, 3072, (3072, 12288), (3072,), False, False),
    "adaln_plain": (1, 3072, 18432, (3072,), (18432,), False, False),
    "adaln_seg6": (1, 3072, 18432, (3072,), (3072,) * 6, False, True),
    "adaln_seg6_dual": (1, 3072, 18432, (3072,), (3072,) * 6, True, True),
    "time_linear_2": (1, 3072, 3072, (3072,), (3072,), False, False),
    "sd35_adaln_dual_m2": (2, 1536, 13824, (1536,), (1536,) * 9, True, True),  # SD3.5-medium, batch 2
    "sd35_adaln_m2": (2, 1536, 9216, (1536,), (1536,) * 6, False, True),
    "sd35_qkv": (SD35_TOKENS, 1536, 4608, (1536,), (4608,), False, False),  # 1024², batch 2: 2 x 4096 image rows
    "sd35_ff_up": (SD35_TOKENS, 1536, 6144, (1536,), (6144,), False, False),
    "sd35_ff_down": (SD35_TOKENS, 6144, 1536, (6144,), (1536,), False, False),
    # the text stream of the joint blocks: its own linears at M = 512 (FLUX) / 2 x 333 (SD3.5, batch 2)
    "ctx_proj": (512, 3072, 3072, (3072,), (3072,), False, False),  # add_q/k/v_proj, to_add_out
    "ctx_ff_up": (512, 3072, 12288, (3072,), (12288,), False, False),
    "ctx_ff_down": (512, 12288, 3072, (12288,), (3072,), False, False),
    "sd35_ctx_proj": (666, 1536, 1536, (1536,), (1536,), False, False),
    "sd35_ctx_ff_down": (666, 6144, 1536, (6144,), (1536,), False, False),
}
SMOKE_LAYERS = {  # tiny versions of the same kinds of layer, for --smoke on the CPU
    "plain": (33, 128, 64, (128,), (64,), False, False),
    "heads": (33, 128, 64, (32,) * 4, (64,), False, False),
    "dual": (33, 256, 64, (256,), (64,), True, False),
    "adaln": (1, 64, 192, (64,), (32,) * 6, True, True),
}
#: name -> (8-bit format, one weight scale per tensor); "fp8_tensor" quantizes weights as the w8a8_fp8 preset does
#: (plain static layers then take cuBLASLt's tensor-wise GEMM)
FORMATS = {"fp8": (DType.FP8E4M3, False), "int8": (DType.INT8, False), "fp8_tensor": (DType.FP8E4M3, True)}
DEVICE = {"name": "cuda"}
#: ``--host-profile``: the folder that gets, per row, where the host time of the routed calls goes (cProfile).
HOST_PROFILE = {"dir": None}


def random_module(spec: SegLinearSpec, seed: int, per_tensor_weight: bool = False) -> SegLinear:
    """A SegLinear on the GPU with random codes and scales (never zeros), packed for the gpu backend;
    ``per_tensor_weight``: one weight scale for the whole tensor (the ``w8a8_fp8`` preset's weights)."""
    dev = DEVICE["name"]
    g = torch.Generator(device=dev).manual_seed(seed)
    module = SegLinear(spec, device=dev, dtype=torch.bfloat16)
    n, k = spec.out_features, spec.in_features
    if spec.weight_dtype is DType.INT8:
        module.weight_codes.copy_(torch.randint(-127, 128, (n, k), device=dev, generator=g))
    else:
        module.weight_codes.copy_(torch.randn(n, k, device=dev, generator=g).mul(64).clamp(-448, 448))
    # one scale per output channel (or one for all) in every column, as the quantizers write per-channel (per-tensor)
    # weights (segmented inputs: scale_mode 1)
    rows = 1 if per_tensor_weight else n
    module.weight_scale.copy_(torch.empty(rows, 1, device=dev).uniform_(1e-3, 2e-3, generator=g).expand(n, -1))
    segments = torch.tensor(spec.input_segments, device=dev)
    module.weight_col_group.copy_(torch.arange(len(segments), device=dev).repeat_interleave(segments))
    module.bias.normal_(generator=g)
    for buf in (module.input_scale, module.input_scale_neg, module.smooth):
        if buf is not None:
            buf.uniform_(0.02, 0.04, generator=g)
    GpuBackend().pack(module)
    return module


def spec_of(layer: str, fmt: DType) -> SegLinearSpec:
    _, k, n, in_segs, out_segs, dual, smooth = LAYERS[layer]
    return SegLinearSpec(k, n, out_segs, in_segs, fmt, weight_dtype=fmt, dual_scale=dual, smooth=smooth,
                         weight_scale_columns=len(in_segs))


def rotating(fns):
    """A call that runs the next of ``fns`` each time (the inputs and weights rotate past the L2)."""
    state = {"i": 0}

    def step():
        state["i"] += 1
        return fns[state["i"] % len(fns)]()

    return step


def bench(fns, graph: bool = False) -> float:
    """Median µs of calling the functions in turn (rotating inputs/weights bigger than L2); ``graph``: the calls
    replayed from a CUDA graph, so that a kernel of a few µs is not hidden behind its CPU launch."""
    step = rotating(fns)
    if DEVICE["name"] == "cpu":
        started = time.perf_counter()
        step()
        return (time.perf_counter() - started) * 1e6
    if graph:
        step()  # compile / autotune outside the capture
        return triton.testing.do_bench_cudagraph(step, rep=150, return_mode="median") * 1e3
    return triton.testing.do_bench(step, warmup=25, rep=150, return_mode="median") * 1e3


def host_us(fns, calls: int = 40, repeats: int = 5) -> float:
    """Host (CPU) µs per call: ``calls`` calls issued back to back without a synchronization, the fastest of
    ``repeats`` (the GPU runs behind; its queue does not fill at this count). What a forward replayed without a CUDA
    graph pays per layer when the host, not the GPU, is the slower side."""
    step = rotating(fns)
    step()
    best = float("inf")
    for _ in range(repeats):
        if DEVICE["name"] == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        _issue(step, calls)
        best = min(best, (time.perf_counter() - started) / calls * 1e6)
    return best


def _issue(step, calls: int) -> None:
    """``calls`` calls of ``step``, back to back, without a synchronization."""
    for _ in range(calls):
        step()


def host_profile(fns, calls: int = 40, top: int = 30) -> str:
    """cProfile's ``top`` functions by cumulative time over ``calls`` calls of ``fns`` in turn, without a
    synchronization: which Python (ours, the custom op's dispatch, Triton's autotuner and launcher) takes the host time
    that :func:`host_us` counts."""
    step = rotating(fns)
    step()
    profiler = cProfile.Profile()
    profiler.runcall(_issue, step, calls)
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(top)
    return text.getvalue()


def host_breakdown(op_args: list[tuple]) -> dict[str, float]:
    """The host µs per call of the op on ``op_args`` (one argument tuple per rotating copy) with one layer of the call
    path taken away at a time (:func:`host_us`, all under ``torch.inference_mode`` as the models run):
    ``host_op_us`` the op through the dispatcher, ``host_no_dispatch_us`` its CUDA implementation called directly,
    ``host_no_routing_us`` the kernel it routes to (:func:`ops.routed_kernel`, chosen once), ``host_no_autotuner_us``
    that kernel with the Triton autotuners skipped (:class:`TunedLaunch`: the config each one chose, its pre-hook
    applied), each with every Triton launch through ``JITFunction.run`` (``ops.BOUND_LAUNCH`` off). The differences
    are what each layer costs. ``host_bound_op_us`` / ``host_bound_no_routing_us``: the op and the routed kernel as the
    library runs them, later launches of a shape replayed (:mod:`segquant.kernels.gpu.bound_launch`)."""
    implementation = scaled_gemm_reference if DEVICE["name"] == "cpu" else ops._scaled_gemm_cuda  # the op's kernel
    with torch.inference_mode():
        routed = [ops.routed_kernel(*args) for args in op_args] if DEVICE["name"] == "cuda" else None
        op_calls = [lambda args=args: ops.scaled_gemm(*args) for args in op_args]
        with ops.switched(BOUND_LAUNCH=False):
            times = {"host_op_us": host_us(op_calls),
                     "host_no_dispatch_us": host_us([lambda args=args: implementation(*args) for args in op_args])}
            if routed is not None:
                times["host_no_routing_us"] = host_us(routed)
                with tuned_launches():
                    times["host_no_autotuner_us"] = host_us(routed)
        if routed is not None:
            with ops.switched(BOUND_LAUNCH=True):
                times["host_bound_op_us"] = host_us(op_calls)
                times["host_bound_no_routing_us"] = host_us(routed)
    return times


class TunedLaunch:
    """Stands in for an autotuned Triton kernel: ``kernel[grid](...)`` launches the kernel the autotuner wraps with the
    config it chose last, running the config's pre-hook as the autotuner does, without the autotuner's lookup."""

    def __init__(self, autotuner):
        self.autotuner, self.config = autotuner, autotuner.best_config

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            options = self.config.all_kwargs()
            if self.config.pre_hook is not None:
                self.config.pre_hook({**dict(zip(self.autotuner.arg_names, args)), **kwargs, **options})
            return self.autotuner.fn[grid](*args, **kwargs, **options)
        return launch


@contextlib.contextmanager
def tuned_launches():
    """The op's autotuned kernels that have run replaced by :class:`TunedLaunch` for a block."""
    from segquant.kernels.gpu import triton_gemm, triton_gemv, triton_tma

    kernels = [(triton_tma, "_tma_gemm_kernel"), (triton_gemm, "_scaled_gemm_kernel"), (triton_gemv, "_gemv_kernel")]
    with contextlib.ExitStack() as stack:
        for module, name in kernels:
            if getattr(getattr(module, name), "best_config", None) is not None:
                stack.enter_context(mock.patch.object(module, name, TunedLaunch(getattr(module, name))))
        yield


def rotation(m: int, k: int, n: int) -> int:
    """How many input/weight copies to rotate so that one pass does not fit in the 60 MB L2."""
    return max(1, min(4, -(-3 * 60_000_000 // (m * k * 2 + n * k))))


def layer_inputs(layer: str, fmt_name: str, copies: int) -> tuple[list, list, list]:
    """``copies`` random modules of ``layer`` packed for the gpu backend, as many bf16 inputs ``(M, K)``, and the
    modules' weights in bf16 (what the bf16 baseline multiplies)."""
    m, k = LAYERS[layer][:2]
    fmt, per_tensor_weight = FORMATS[fmt_name]
    modules = [random_module(spec_of(layer, fmt), seed, per_tensor_weight) for seed in range(copies)]
    xs = [torch.randn(m, k, device=DEVICE["name"], dtype=torch.bfloat16) for _ in range(copies)]
    return modules, xs, [mod.dequantized_weight().to(torch.bfloat16) for mod in modules]


@contextlib.contextmanager
def pinned(kernel: str):
    """``ops.gemm`` on ``kernel`` alone (one of :func:`ops.gemm_kernels`' names): cuBLASLt off, the persistent and
    Gluon kernels on where ``kernel`` is one of them, no first-call timing."""
    with (ops.switched(USE_SCALED_MM=False, USE_TMA=kernel != "tiled", USE_WGMMA=kernel.startswith("wgmma")),
          mock.patch.object(ops, "fastest_kernel", lambda *_, **__: kernel)):
        yield


def measure(layer: str, fmt_name: str, compile_: bool, each_config_: bool = False) -> dict:
    """One row of the table: timings (µs), TFLOP/s, speed-ups, error against the twin, tuned configs; with
    ``each_config_`` also every config of the persistent kernels timed alone (:func:`each_config`)."""
    m, k, n, in_segs, out_segs, dual, _ = LAYERS[layer]
    dev = DEVICE["name"]
    copies = rotation(m, k, n)
    # every row replayed from a CUDA graph: an eager launch through Triton's autotuner dispatch costs ~100-400 µs of
    # CPU (run of 2026-12-05: FLUX's out_proj, a ~90 µs GEMM, timed at 400 µs eagerly), which would be timed instead
    # of the GPU; a compiled model replays the same kernels from CUDA graphs
    graph = dev == "cuda"
    modules, xs, weights = layer_inputs(layer, fmt_name, copies)
    backend = GpuBackend()
    row = dict(layer=layer, fmt=fmt_name, M=m, K=k, N=n, segments=len(in_segs), out_segments=len(out_segs),
               dual=dual, copies=copies, cuda_graph=graph)
    pairs = list(zip(modules, xs))
    tuned_before = set(tuned_configs())
    row["bf16_mm_us"] = bench([lambda w=w, x=x, mod=mod: F.linear(x, w, mod.bias)
                               for (mod, x), w in zip(pairs, weights)], graph)
    row["bf16_mm_no_bias_us"] = bench([lambda w=w, x=x: torch.mm(x, w.t()) for (_, x), w in zip(pairs, weights)],
                                      graph)
    row["ours_eager_us"] = bench([lambda mod=mod, x=x: backend.forward(mod, x) for mod, x in pairs], graph)
    quantized = [quantize_input(mod, x) for mod, x in pairs]
    gemm_calls = [lambda mod=mod, q=q: _gemm(mod, q) for (mod, _), q in zip(pairs, quantized)]
    row["gemm_only_us"] = bench(gemm_calls, graph)
    row["host_us"] = host_us(gemm_calls)
    if HOST_PROFILE["dir"] is not None:
        (HOST_PROFILE["dir"] / f"host_profile_{layer}_{fmt_name}.txt").write_text(host_profile(gemm_calls))
    row["bf16_host_us"] = host_us([lambda w=w, x=x, mod=mod: F.linear(x, w, mod.bias)
                                   for (mod, x), w in zip(pairs, weights)])
    if not static_fp8_fits(modules[0], quantized[0][0], torch.bfloat16):
        row.update(host_breakdown([_gemm_args(mod, q) + (torch.bfloat16,) for (mod, _), q in zip(pairs, quantized)]))
    for kernel in candidates(modules[0], quantized[0], fmt_name):  # each kernel alone
        with pinned(kernel):
            name = "triton" if kernel == "tiled" else kernel
            row[f"gemm_{name}_us"] = bench(gemm_calls, graph)
            row[f"rel_err_{name}"] = _rel(_gemm(modules[0], quantized[0]), ref_of(modules[0], quantized[0]))
    if fmt_name == "fp8_tensor":  # the same codes and scales on the row-wise call that per-channel weights take
        row["gemm_rowwise_us"] = bench([lambda mod=mod, q=q: ops.gemm(*_gemm_args(mod, q), torch.bfloat16)
                                        for (mod, _), q in zip(pairs, quantized)], graph)
    if tensor_wise_fp8(modules[0]) and m > ops.GEMV_MAX_M_8BIT:  # the routed call without its bias epilogue
        row["gemm_no_bias_us"] = bench([lambda mod=mod, q=q: ops.plain_fp8(
            q[0][0], mod.weight_codes, mod.gpu_fp8_rows, mod.gpu_fp8_columns, None, torch.bfloat16)
            for (mod, _), q in zip(pairs, quantized)], graph)
    if fmt_name in ("fp8", "fp8_tensor") and len(in_segs) == 1 and not dual and m > ops.GEMV_MAX_M_8BIT:
        row.update(cublaslt_variants(modules[0], quantized[0], gemm_calls, graph))
    if m <= ops.GEMV_MAX_M:  # the routing before the GEMV: cuBLASLt (plain FP8) or the tiled kernel
        with ops.switched(USE_GEMV=False):
            row["gemm_no_gemv_us"] = bench(gemm_calls, graph)
    row["quant_only_us"] = bench([lambda mod=mod, x=x: quantize_input(mod, x) for mod, x in pairs], graph)
    row["rel_err_vs_twin"] = _rel(backend.forward(modules[0], xs[0]), ref_of(modules[0], quantized[0]))
    row["best_config"] = "; ".join(c for key, c in tuned_configs().items() if key not in tuned_before) or "cuBLASLt"
    if each_config_ and len(in_segs) == 1 and not dual:  # after best_config: it empties the autotuners' caches
        row["each_config_us"] = each_config(modules[0], quantized[0], gemm_calls, graph, fmt_name)
    if compile_:  # one module (the weights of these layers stay far from L2-bound), rotating inputs
        lin = torch.compile(F.linear)
        mod0, w0 = modules[0], weights[0]
        row["bf16_compiled_us"] = bench([lambda x=x: lin(x, w0, mod0.bias) for x in xs], graph)
        fwd = torch.compile(lambda x: backend.forward(mod0, x))
        row["ours_compiled_us"] = bench([lambda x=x: fwd(x) for x in xs], graph)
    flops = 2.0 * m * k * n
    row["tflops_eager"] = flops / row["ours_eager_us"] / 1e6
    row["tflops_gemm"] = flops / row["gemm_only_us"] / 1e6
    row["peak_frac_gemm"] = row["tflops_gemm"] / PEAK_8BIT
    row["tbps_gemm"] = (m * k * (2 if dual else 1) + n * k + 2 * m * n) / row["gemm_only_us"] / 1e6
    row["speedup_eager"] = row["bf16_mm_us"] / row["ours_eager_us"]
    if compile_:
        row["speedup_compiled_vs_mm"] = row["bf16_mm_us"] / row["ours_compiled_us"]
        row["speedup_compiled_vs_compiled"] = row["bf16_compiled_us"] / row["ours_compiled_us"]
    return row


def cublaslt_variants(mod, quantized, gemm_calls, graph: bool) -> dict:
    """Plain FP8 layers (``torch._scaled_mm``): the GEMM with ``ops.FP8_FAST_ACCUM`` (no periodic float32
    promotion; its error against the twin), and, as a diagnostic of cuBLASLt's kernel choice, the same codes with one
    scale per tensor, one input and no bias (for per-channel weights: what the call would cost if their scales were
    applied elsewhere; run 16 timed FLUX's out_proj so at 76.6 µs)."""
    with ops.switched(FP8_FAST_ACCUM=True):
        row = {"gemm_fast_accum_us": bench(gemm_calls, graph),
               "rel_err_fast_accum": _rel(_gemm(mod, quantized), ref_of(mod, quantized))}
    codes, weight = quantized[0][0], mod.weight_codes  # (M, K) and (N, K) E4M3
    one = torch.ones((), device=codes.device)
    row["gemm_tensorwise_us"] = bench([lambda: torch._scaled_mm(codes, weight.t(), scale_a=one, scale_b=one,
                                                                out_dtype=torch.bfloat16)], graph)
    return row


def each_config(mod, quantized, gemm_calls, graph: bool, fmt_name: str) -> dict[str, float]:
    """Every config of the persistent TMA kernel (and, INT8 with ``ops.USE_WGMMA`` on, of the Gluon kernel) that this
    one-input layer's launch keeps, pinned and timed alone (µs), by :func:`config_name`: which tile, ring depth and
    store win, and by how much, beyond the autotuner's one choice."""
    from segquant.kernels.gpu.triton_tma import _tma_gemm_kernel, sized_configs, store_descriptor

    kernels = {"tma": _tma_gemm_kernel}
    if fmt_name == "int8" and ops.USE_WGMMA["enabled"] and DEVICE["name"] == "cuda":
        from segquant.kernels.gpu.gluon_wgmma import _wgmma_gemm_kernel

        kernels["wgmma"] = _wgmma_gemm_kernel
    m, k, n = quantized[0].shape[1], quantized[0].shape[2], mod.weight_codes.shape[0]
    out = torch.empty(m, n, device=quantized[0].device, dtype=torch.bfloat16)
    launch = {"M": m, "N": n, "K": k, "c_desc": store_descriptor(out)}
    times = {}
    for name, kernel in kernels.items():
        configs = kernel.configs
        try:
            for config in sized_configs(configs, launch):
                kernel.configs = [config]
                kernel.cache.clear()
                with pinned(name):
                    times[config_name(name, config)] = bench(gemm_calls, graph)
        finally:
            kernel.configs = configs
            kernel.cache.clear()
    return times


def config_name(kernel: str, config) -> str:
    """``"<kernel> BMxBNxBK w<warps> s<stages>"`` (a GEMV's ``BNxBK``; a Gluon kernel's stages are its ring slots),
    and `` tma-store=<STORE_TMA>`` where the config has one."""
    kw = config.kwargs
    tile = "x".join(str(kw[dim]) for dim in ("BM", "BN", "BK") if dim in kw)
    name = f"{kernel} {tile} w{config.num_warps} s{kw.get('STAGES', config.num_stages)}".lstrip()
    return name + (f" tma-store={kw['STORE_TMA']}" if "STORE_TMA" in kw else "")


def candidates(mod, quantized, fmt_name: str) -> list[str]:
    """The GEMM kernels that ``ops`` chooses among for this layer (:func:`ops.gemm_kernels`' names: "tiled", the tiled
    Triton kernel, also where cuBLASLt takes plain FP8 layers; the Gluon ones where ``ops.USE_WGMMA`` is on); none
    where the op has no choice to make."""
    if fmt_name == "fp8_tensor":  # its Triton kernels are the "fp8" row's; what differs is the cuBLASLt call
        return []
    names = list(ops.gemm_kernels(*_gemm_args(mod, quantized), torch.bfloat16))
    return names if len(names) > 1 or (fmt_name == "fp8" and ops.USE_SCALED_MM["enabled"]) else []


def _gemm_args(mod, quantized):
    codes, a_scale, a_scale_neg = quantized
    lay = mod.gpu_layout
    return (codes, mod.weight_codes, a_scale, a_scale_neg, mod.weight_scale, mod.gpu_a_col, mod.gpu_w_col, mod.bias,
            None, None, lay.out_segment, lay.scale_mode, lay.k_align)


def _gemm(mod, quantized):
    """The GEMM as the backend routes it: plain static FP8 layers on ``torch._scaled_mm`` with their packed scales
    (tensor-wise where the weight has one scale), everything else through ``ops.gemm``."""
    if static_fp8_fits(mod, quantized[0], torch.bfloat16):
        return static_fp8_gemm(mod, quantized[0], torch.bfloat16)
    return ops.gemm(*_gemm_args(mod, quantized), torch.bfloat16)


def _rel(a, b) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def ref_of(mod, quantized):
    return scaled_gemm_reference(*_gemm_args(mod, quantized), torch.bfloat16)


def tuned_configs() -> dict:
    """Autotuner choices so far: key -> :func:`config_name` (the tiled kernel's without a prefix; "gemv ...",
    "tma ...", "wgmma ...", "wgmma_tile_scaled ..."); keys are the autotuners' (shape values and dtypes; empty off
    CUDA)."""
    if DEVICE["name"] != "cuda":
        return {}
    from segquant.kernels.gpu.triton_gemm import _scaled_gemm_kernel
    from segquant.kernels.gpu.triton_gemv import _gemv_kernel
    from segquant.kernels.gpu.triton_tma import _tma_gemm_kernel

    def described(kernel, prefix: str) -> dict:
        return {(prefix,) + tuple(key): config_name(prefix, c) for key, c in kernel.cache.items()}

    tuned = {**described(_scaled_gemm_kernel, ""), **described(_gemv_kernel, "gemv"),
             **described(_tma_gemm_kernel, "tma")}
    if torch.cuda.get_device_capability()[0] == 9:
        from segquant.kernels.gpu.gluon_wgmma import _wgmma_gemm_kernel, _wgmma_tile_scaled_kernel

        tuned.update(described(_wgmma_gemm_kernel, "wgmma"))
        tuned.update(described(_wgmma_tile_scaled_kernel, "wgmma_tile_scaled"))
    return tuned


COLUMNS = ["layer", "fmt", "M", "K", "N", "bf16_mm_us", "bf16_mm_no_bias_us", "bf16_compiled_us", "ours_eager_us",
           "ours_compiled_us", "gemm_only_us", "gemm_no_gemv_us", "gemm_triton_us", "gemm_tma_us",
           "gemm_tma_split_tail_us", "gemm_tma_halves_tail_us", "gemm_wgmma_us", "gemm_wgmma_tile_scaled_us",
           "gemm_fast_accum_us", "gemm_tensorwise_us", "gemm_rowwise_us", "gemm_no_bias_us", "quant_only_us", "host_us",
           "bf16_host_us",
           "host_op_us", "host_no_dispatch_us", "host_no_routing_us", "host_no_autotuner_us", "host_bound_op_us",
           "host_bound_no_routing_us",
           "tflops_gemm", "peak_frac_gemm", "tbps_gemm", "speedup_eager",
           "speedup_compiled_vs_mm", "speedup_compiled_vs_compiled",
           "rel_err_vs_twin", "best_config"]


def table(rows: list[dict]) -> str:
    def fmt(v):
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(fmt(r.get(c, "-")) for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--layers", default=",".join(LAYERS))
    parser.add_argument("--formats", default="fp8,int8")
    parser.add_argument("--compile-layers", default="ff_up,ff_down_dual,adaln_seg6",
                        help="layers also timed under torch.compile (each costs a compilation)")
    parser.add_argument("--each-config", default="",
                        help="layers whose persistent-kernel configs are also timed one by one (each costs a compile)")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU, to test this script")
    parser.add_argument("--triton-fp8", action="store_true", help="plain FP8 layers on Triton, not _scaled_mm")
    parser.add_argument("--host-profile", action="store_true",
                        help="write where each row's host time goes (cProfile of the routed calls) to --out")
    args = parser.parse_args()
    ops.USE_SCALED_MM["enabled"] = not args.triton_fp8
    if args.smoke:
        DEVICE["name"] = "cpu"
        LAYERS.clear()
        LAYERS.update(SMOKE_LAYERS)
        args.layers, args.compile_layers, args.each_config = ",".join(SMOKE_LAYERS), "dual", "plain"
    args.out.mkdir(parents=True, exist_ok=True)
    HOST_PROFILE["dir"] = args.out if args.host_profile else None
    rows, started = [], time.time()
    for layer in args.layers.split(","):
        for fmt_name in args.formats.split(","):
            rows.append(measure(layer, fmt_name, layer in args.compile_layers.split(","),
                                layer in args.each_config.split(",")))
            print(json.dumps(rows[-1]), flush=True)
            with open(args.out / "scaled_gemm.jsonl", "a") as log:
                log.write(json.dumps(rows[-1]) + "\n")
    device = torch.cuda.get_device_name() if DEVICE["name"] == "cuda" else "cpu (smoke)"
    header = (f"device: {device}, torch {torch.__version__}, triton {triton.__version__}, "
              f"date {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {time.time() - started:.0f} s")
    (args.out / "scaled_gemm.json").write_text(json.dumps(rows, indent=1))
    (args.out / "scaled_gemm.md").write_text(header + "\n\n" + table(rows) + "\n")
    print(header)
    print(table(rows))


if __name__ == "__main__":
    main()
