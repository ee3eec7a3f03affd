"""End-to-end latency, compile time and memory of full-size denoisers: bf16 vs torchao vs segquant W8A8 / 4-bit.

One process, one GPU, random weights (speed does not depend on the values). Variants:

- ``bf16``          eager bf16
- ``bf16_compiled`` bf16, repeated blocks compiled (regional compilation)
- ``torchao_fp8``   torchao ``Float8DynamicActivationFloat8WeightConfig(PerRow())``, compiled the same way
                    (torchao's default ``set_inductor_config=True`` switches on Inductor's coordinate-descent
                    tuning: 415 of the 450 s of its first SD3.5 call)
- ``torchao_fp8_nocfg`` the same with ``set_inductor_config=False``: torchao's kernels, Inductor's default settings
- ``torchao_fp8_whole`` the same, the whole model compiled as one graph (torchao's SD3.5 first call takes 400+ s
                    regionally, runs 12-13)
- ``torchao_int4``  torchao ``Int4WeightOnlyConfig(group_size=64)`` (tinygemm packing), compiled the same way
- ``sq_fp8``        segquant FP8 E4M3 W8A8 (per-channel weights, static per-tensor inputs, SmoothQuant per
                    output segment: the AdaLN chunks), backend "gpu", compiled the same way
- ``sq_fp8_fast``   ``sq_fp8`` with cuBLASLt's fast FP8 accumulation (``ops.FP8_FAST_ACCUM``, as torchao calls it)
- ``sq_fp8_tma``    ``sq_fp8`` with the plain layers on our Triton kernels (TMA or tiled, the faster per shape)
                    instead of cuBLASLt (exact float32 promotion every K tile)
- ``sq_int8``       the same in INT8
- ``sq_fp8_fused`` / ``sq_int8_fused``  ``sq_fp8`` / ``sq_int8`` on the denoiser with diffusers' fused q/k/v
                    projections kept whole (one smoothing for the three: the input quantized once, one GEMM;
                    :func:`segquant.fuse_projections`)
- ``sq_int8_tiled`` ``sq_int8`` without the persistent TMA kernel (``ops.USE_TMA`` off: the tiled kernel only)
- ``sq_int8_dyn``   INT8 with dynamic per-token inputs (scale computed per call), otherwise as ``sq_int8``
                    (the ``w8a8_fast`` preset without its DualScale on the weight-bound AdaLN layers)
- ``sq_int8_dyn_cat`` ``sq_int8_dyn`` with the ``cat`` input segments too (``concat_to_linear``, +0.5 dB on the FLUX
                    demo): each INT8 ``cat`` layer runs as one plain GEMM per segment (``GemmLayout.split_blocks``)
- ``sq_int8_full``  INT8 with all six SegPatterns: also per-head / per-``cat``-input scales (per-K-tile scaled
                    GEMM) and DualScale (two products per weight tile)
- ``sq_int8_dyn_full`` the same with dynamic per-token inputs: the ``w8a8`` preset's layout (its quality preset)
- ``sq_int8_segs`` / ``sq_fp8_segs``  ``sq_int8`` / ``sq_fp8`` with the input segments too (per-head / per-``cat``-
                    input static scales, per-K-tile scaled GEMMs), no DualScale
- ``sq_int8_segfold`` / ``sq_fp8_segfold``  the same with the segment scales folded into the smoothing
                    (``input_quant.fold_segments``): the same input codes, plain GEMMs
- ``sq_fp8_preset`` / ``sq_fp8_preset_fused``  the ``w8a8_fp8`` preset as users get it (per-tensor FP8 weights:
                    cuBLASLt's tensor-wise GEMM; the attention q/k/v in INT8 static, the conditioning linears in
                    INT8 dynamic per-token), q/k/v fused with ``_fused``
- ``sq_w4a8_r32``   packed INT4 per-group(64) weights with SVDQuant's rank-32 branch (smoothing alpha 0.5,
                    round-to-nearest: the kernel's work does not depend on GPTQ), INT8 static per-tensor inputs,
                    output segments
- ``sq_w4a8_r32_2l`` ``sq_w4a8_r32`` with two-level group scales (``two_level: true``): the layers with at
                    least 128 rows expand INT4 to INT8 in one pass and run the 8-bit tensor-core GEMM
- ``sq_w4a8_2l_preset`` the ``w4a8_two_level`` preset's layout (all segments, the input segments folded, DualScale
                    on the weight-bound layers only), round-to-nearest weights
- ``sq_w8a8_preset`` / ``sq_w8a8_fast_preset``  the ``w8a8`` / ``w8a8_fast`` presets as users get them
- ``sq_w8a8_fast_preset_fused`` ``w8a8_fast`` with ``fuse_projections`` (q / k / v quantized once per token, not
                    three times)
- ``sq_w4a16``      packed INT4 per-group(64) weights, 16-bit inputs (weight-only), output segments
- ``*_nogluon``     any variant without the Gluon INT8 kernels (``ops.USE_WGMMA`` off; ``gpu_session.sh`` turns
                    them on for the others), after ``_sgelu`` where both are given
- ``*_mk``          any variant compiled with Inductor's ``triton.multi_kernel`` (row reductions up to 16384 wide
                    may run persistent, the row kept in registers: one read of a dynamic quantizer's input instead
                    of two); the last suffix, after ``_sgelu`` / ``_nogluon``
- ``*_biasafter``   any variant with the plain static FP8 layers' bias added to their bf16 product after
                    cuBLASLt's GEMM, where the compiler fuses it into the next kernel (one more rounding than the
                    emulated layer: a speed experiment)
- ``*_unbound``     any variant with every Triton kernel launched through ``JITFunction.run`` (``ops.BOUND_LAUNCH``
                    off; the library replays later launches of a shape): the "median ms" column (no CUDA graph) is
                    where it shows
- ``*_sgelu``       any variant with every tanh-GELU computed in its sigmoid form
                    (:func:`segquant.sigmoid_form_gelus`, after quantize: the same function to float32
                    rounding; the tanh form's GELU + quantize kernel is ALU-bound, runs 13-14)

    PYTHONPATH=. python benchmarks/e2e_w8a8.py --model sd35 --variants all --json out.json
    ... --compile-mode reduce-overhead    # the blocks compiled with per-block CUDA graphs (eager-call latency)
    ... --profile                         # also the GPU time of one call per kernel (where the time goes)

Per variant: first-call time (includes compilation), median latency of ``--iters`` calls (CUDA events),
the same with the whole forward captured in one CUDA graph (``graph_ms``: no CPU launch overhead, the
number a deployment with ``mode="reduce-overhead"`` or a captured sampler gets), memory the model holds on
the GPU (allocated bytes after preparation: weights, buffers and the example inputs, less what earlier variants of
the process left allocated, ``leftover_gib``; this also counts tensor subclasses such as torchao's;
``model_tensor_gib``: the model's own parameters and buffers), peak
allocated memory during a call, and for the segquant variants
the relative error of the GPU backend against the emulated backend on the same input: of the whole
output (``‖y_gpu − y_emul‖ / ‖y_emul‖``; through dozens of random-weight blocks in bf16 this grows with
depth, whatever the kernel: ``bf16_compiled`` reports the same measure between its compiled and its eager
forward, ``rel_err_compiled_vs_eager``, the floor that fusion and summation order alone give) and of each of
the first ``LAYERS_CHECKED`` layers on its own captured input (median and max: what the kernel itself adds).
Stage times go to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import sys
import time
from unittest import mock

import torch

from fullsize import build
from torch._dynamo.utils import compilation_time_metrics, compile_times, counters

from segquant import preset_dict
from segquant.enums import DType
from segquant.models.activations import sigmoid_form_gelus
from segquant.models.position import crop_position_tables
from segquant.pipeline.cuda_graph import capture_cuda_graphs, release_cuda_graphs

VARIANTS = ("bf16", "bf16_compiled", "torchao_fp8", "torchao_fp8_nocfg", "torchao_fp8_whole", "torchao_int4",
            "sq_fp8", "sq_fp8_fast", "sq_fp8_tma", "sq_fp8_tensor", "sq_fp8_tensor_fused", "sq_fp8_preset",
            "sq_fp8_preset_fused", "sq_int8", "sq_fp8_fused", "sq_int8_fused", "sq_int8_tiled",
            "sq_int8_dyn", "sq_int8_dyn_cat", "sq_int8_full", "sq_int8_dyn_full", "sq_int8_segs", "sq_fp8_segs",
            "sq_int8_segfold", "sq_fp8_segfold", "sq_w4a8_r32", "sq_w4a8_r32_2l", "sq_w4a8_2l_preset", "sq_w8a8_preset",
            "sq_w8a8_fast_preset", "sq_w8a8_fast_preset_fused", "sq_w4a16")
#: Variants that are a preset's config (round-to-nearest weights: GPTQ's work does not change the kernels).
PRESET_VARIANTS = {"sq_w4a8_2l_preset": "w4a8_two_level", "sq_w8a8_preset": "w8a8",
                   "sq_w8a8_fast_preset": "w8a8_fast", "sq_w8a8_fast_preset_fused": "w8a8_fast"}
#: Variants that set routing switches of ``segquant.kernels.gpu.ops`` for their run.
SWITCHES = {"sq_fp8_fast": {"FP8_FAST_ACCUM": True}, "sq_int8_tiled": {"USE_TMA": False, "USE_WGMMA": False},
            "sq_fp8_tma": {"USE_SCALED_MM": False}}
LAYERS_CHECKED = 48
#: ``--fp8-model-check``: the error checks also compare with the emulated backend summing FP8 as the model of the
#: tensor cores does (an extra emulated forward, its FP8 products on a Triton kernel of CUDA-core arithmetic)
FP8_MODEL_CHECK = {"enabled": False}
_ALL_PATTERNS = ["linear_to_chunk", "linear_to_split", "concat_to_linear", "stack_to_linear",
                 "reshape_to_linear", "activation_to_linear"]


#: Variant suffix: the model's tanh-GELUs in the sigmoid form (:func:`segquant.sigmoid_form_gelus`).
SIGMOID_GELU = "_sgelu"
#: Variant suffix: without the Gluon INT8 kernels (``ops.USE_WGMMA`` off), for a same-run comparison.
NO_GLUON = "_nogluon"
#: Variant suffix: compiled with Inductor's ``triton.multi_kernel`` on, so that row reductions up to 16384 wide (the
#: norms, the per-token quantizers' ``amax`` over 3072 or 12288 channels) may run as one persistent kernel that keeps
#: the row in registers, timed against the looped two-kernel form at the first call.
MULTI_KERNEL = "_mk"
#: Variant suffix: the plain static FP8 layers' bias added to their bf16 product afterwards instead of in cuBLASLt's
#: epilogue (:func:`fp8_bias_after_product`), so that the compiler fuses the add into the kernel that reads the product.
BIAS_AFTER = "_biasafter"
#: Variant suffix: every launch of the Triton kernels (tiled, TMA, GEMV) through ``JITFunction.run``, not replayed after
#: the first of each shape (``ops.BOUND_LAUNCH`` off): the host time of the forward without a CUDA graph.
UNBOUND = "_unbound"


def base_of(variant: str) -> str:
    """``variant`` without its run-time suffixes (:data:`SIGMOID_GELU`, :data:`NO_GLUON`, :data:`MULTI_KERNEL`,
    :data:`BIAS_AFTER`, :data:`UNBOUND`)."""
    for suffix in (UNBOUND, BIAS_AFTER, MULTI_KERNEL, NO_GLUON, SIGMOID_GELU):
        variant = variant.replace(suffix, "")
    return variant


def fp8_bias_after_product(module, codes: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """:func:`segquant.kernels.gpu.plan.static_fp8_gemm` with the bias added to the rounded product, not in the GEMM's
    epilogue (cuBLASLt picks a slower kernel for some shapes when it adds a bias: runs 18-19). One more bf16 rounding
    than the emulated layer makes; a speed experiment, not the library's numerics."""
    from segquant.kernels.gpu import plan

    product = plan.plain_fp8(codes[0], module.weight_codes, plan._fp8_row_scales(module, codes.shape[1]),
                             module.gpu_fp8_columns, None, dtype)
    return product if module.bias is None else product + module.bias.to(dtype)


def switches_of(variant: str) -> dict:
    """The routing switches of ``segquant.kernels.gpu.ops`` that ``variant`` sets for its run."""
    return {**SWITCHES.get(base_of(variant), {}), **({"USE_WGMMA": False} if NO_GLUON in variant else {}),
            **({"BOUND_LAUNCH": False} if UNBOUND in variant else {})}


def segquant_config(variant: str) -> dict:
    """The segquant config of a ``sq_*`` variant (8-bit: per-channel weights unless ``_tensor``: per-tensor, static
    per-tensor inputs unless ``_dyn``: dynamic per-token, q/k/v fused with one smoothing if ``_fused``, input
    segments with ``_segs`` / ``_segfold``, the ``cat`` segments alone with ``_cat``; 4-bit: see the module doc)."""
    int4 = {"type": "int4", "granularity": "group", "group_size": 64}
    if variant in PRESET_VARIANTS:
        config = preset_dict(PRESET_VARIANTS[variant])
        config["default"]["calib"] = {"type": "amax"}
        return {**config, "fuse_projections": variant.endswith("_fused")}
    if variant.startswith("sq_fp8_preset"):
        return {**preset_dict("w8a8_fp8"), "fuse_projections": variant.endswith("_fused")}
    if variant.startswith("sq_w4a8_r32"):
        return {"default": {"search_patterns": _ALL_PATTERNS[:2], "opt": {"type": "svd", "alpha": 0.5, "low_rank": 32},
                            "calib": {"type": "amax"}, "weight_quant": {**int4, "two_level": variant.endswith("_2l")},
                            "input_quant": {"type": "int8", "granularity": "tensor", "dynamic": False}}}
    if variant == "sq_w4a16":
        return {"default": {"search_patterns": _ALL_PATTERNS[:2], "opt": {"type": "default"}, "calib": {"type": "amax"},
                            "weight_quant": int4, "input_quant": {"enable": False}}}
    fmt = "fpe4m3" if variant.startswith("sq_fp8") else "int8"
    fold = variant.endswith("_segfold")
    patterns = (_ALL_PATTERNS if variant.endswith("_full") else
                _ALL_PATTERNS[:5] if fold or variant.endswith("_segs") else
                _ALL_PATTERNS[:3] if variant.endswith("_cat") else _ALL_PATTERNS[:2])
    dynamic = "_dyn" in variant
    return {"fuse_projections": variant.endswith("_fused"),
            "default": {"search_patterns": patterns, "opt": {"type": "smooth", "alpha": 0.5},
                        "calib": {"type": "amax"},
                        "input_quant": {"type": fmt, "granularity": "token" if dynamic else "tensor",
                                        "dynamic": dynamic, "fold_segments": fold},
                        "weight_quant": {"type": fmt, "granularity": "tensor" if "_tensor" in variant else "channel"}}}


def stage(message: str, _start=[time.perf_counter()]) -> None:  # noqa: B006 (the start time)
    print(f"[{time.perf_counter() - _start[0]:7.1f} s] {message}", file=sys.stderr, flush=True)


def graph_ms(model, example: dict, iters: int) -> float:
    """Median milliseconds of a forward replayed from one CUDA graph, as a pipeline gets it from
    :func:`segquant.pipeline.cuda_graph.capture_cuda_graphs` (inputs copied in, graph replayed, output copied)."""
    capture_cuda_graphs(model)
    try:
        times = sorted(timed_calls(model, example, iters)[1])
    finally:
        release_cuda_graphs(model)
    return times[iters // 2]


def output(model, example: dict) -> torch.Tensor:
    """The model's first output for ``example``, in float32."""
    with torch.inference_mode():
        return model(**example)[0].float()


def layer_errors(model, example: dict) -> dict:
    """GPU vs emulated backend per layer, each on its own input captured from an emulated forward; where the model
    has FP8 layers and ``FP8_MODEL_CHECK`` is on, also against the emulated backend with the tensor cores' FP8 sum
    modelled (without promotion where the variant runs cuBLASLt's fast accumulation)
    (``segquant.kernels.fp8_accumulation``; keys ``..._tc``, and how many checked layers are equal to the bit)."""
    from segquant.kernels.backend import seglinear_modules, set_backend
    from segquant.kernels.fp8_accumulation import HOPPER, HOPPER_FAST, tensor_core_numerics
    from segquant.kernels.gpu import ops

    modules = [m for _, m in seglinear_modules(model)]
    layers = modules[:LAYERS_CHECKED]
    inputs = {}

    def keep_first(module, args, out) -> None:  # returns None: the output is left as it is
        inputs.setdefault(module, (args[0], out))

    hooks = [m.register_forward_hook(keep_first) for m in layers]
    modelled = FP8_MODEL_CHECK["enabled"] and any(m.spec.weight_dtype is DType.FP8E4M3 for m in modules)
    with torch.inference_mode():
        y_emul = output(model, example)
        for hook in hooks:
            hook.remove()
        if modelled:
            with tensor_core_numerics(HOPPER_FAST if ops.FP8_FAST_ACCUM["enabled"] else HOPPER):
                y_emul_tc = output(model, example)
                layer_tc = {m: m(x) for m, (x, _) in inputs.items()}
        set_backend(model, "gpu")
        y_gpu = output(model, example)
        layer_gpu = {m: m(x).float() for m, (x, _) in inputs.items()}
    errors = sorted(float((layer_gpu[m] - y.float()).norm() / y.float().norm()) for m, (_, y) in inputs.items())
    row = {"rel_err_gpu_vs_emulated": float((y_gpu - y_emul).norm() / y_emul.norm()),
           "layer_rel_err_median": errors[len(errors) // 2], "layer_rel_err_max": errors[-1],
           "layers_checked": len(errors)}
    if modelled:
        errors_tc = sorted(float((layer_gpu[m] - y.float()).norm() / y.float().norm()) for m, y in layer_tc.items())
        row.update({"rel_err_gpu_vs_emulated_tc": float((y_gpu - y_emul_tc).norm() / y_emul_tc.norm()),
                    "layer_rel_err_tc_max": errors_tc[-1],
                    "layers_equal_tc": sum(torch.equal(layer_gpu[m], y.float()) for m, y in layer_tc.items())})
    return row


def timed_calls(model, example: dict, iters: int) -> tuple[float, list[float]]:
    """First-call seconds (compilation included) and the per-call milliseconds of ``iters`` later calls."""
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    with torch.inference_mode():
        model(**example)
        torch.cuda.synchronize()
        first = time.perf_counter() - t0
        for _ in range(2):
            model(**example)
        times = []
        for _ in range(iters):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            model(**example)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    return first, times


def prepare(variant: str, model, example: dict, compile_mode: str | None = None, sigmoid_gelu: bool = False) -> dict:
    """Quantize/compile ``model`` in place for ``variant`` (without :data:`SIGMOID_GELU`; ``sigmoid_gelu``: its
    GELUs changed after the error check); returns extra facts (quantize time, errors)."""
    from segquant.pipeline.regional_compile import compile_repeated_blocks

    facts: dict = {}
    if variant.startswith("torchao_fp8"):
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

        quantize_(model, Float8DynamicActivationFloat8WeightConfig(
            granularity=PerRow(), set_inductor_config=not variant.endswith("_nocfg")))
    if variant == "torchao_int4":
        from torchao.quantization import Int4WeightOnlyConfig, quantize_

        quantize_(model, Int4WeightOnlyConfig(group_size=64, int4_packing_format="tile_packed_to_4d"))
    if variant.startswith("sq_"):
        from segquant import quantize
        from segquant.kernels.backend import set_backend

        config = segquant_config(variant)
        t0 = time.perf_counter()
        with torch.inference_mode():
            quantize(model, [example], config, example=example)
        torch.cuda.synchronize()
        facts["quantize_s"] = time.perf_counter() - t0
        stage(f"{variant}: quantized in {facts['quantize_s']:.1f} s")
        try:
            facts.update(layer_errors(model, example))
        except Exception as error:  # keep the timing of a variant whose error check broke
            facts["error_check_failed"] = f"{type(error).__name__}: {error}"[:300]
            set_backend(model, "gpu")
        stage(f"{variant}: errors {facts}")
    if sigmoid_gelu:
        facts["sigmoid_form_gelus"] = sigmoid_form_gelus(model)
    mode = {"mode": compile_mode} if compile_mode else {}
    if variant.endswith("_whole"):
        model.compile(**mode)
    elif variant != "bf16":
        compile_repeated_blocks(model, fullgraph=variant.startswith("sq_"), **mode)
    return facts


def kernel_profile(model, example: dict, top: int = 25) -> dict:
    """GPU time of one forward by kernel (torch.profiler's CUDA activity: launch overhead excluded):
    ``{"total_ms": ..., "kernels": [[name, ms, calls], ...], "segquant_ops": ..., "tuned": ...}`` for the ``top``
    kernels by time, segquant's GEMMs by shape (:func:`segquant_ops_by_shape`) and the configs its Triton kernels
    were tuned to (autotuner key -> tile, :func:`gemm_w8a8.tuned_configs`)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    from gemm_w8a8 import tuned_configs

    with torch.inference_mode():
        model(**example)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True) as prof:
            model(**example)
            torch.cuda.synchronize()
    # kernels only: not the CPU ops, nor the GPU annotations of compiled graphs, above them
    rows = [(e.key, e.self_device_time_total / 1e3, e.count) for e in prof.key_averages()
            if e.device_type == DeviceType.CUDA and not e.is_user_annotation and e.self_device_time_total > 0]
    rows.sort(key=lambda r: -r[1])
    return {"total_ms": round(sum(r[1] for r in rows), 2),
            "kernels": [[name[:90], round(ms, 3), calls] for name, ms, calls in rows[:top]],
            "segquant_ops": segquant_ops_by_shape(prof),
            "tuned": {" ".join(map(str, key))[:120]: config for key, config in tuned_configs().items()}}


def segquant_ops_by_shape(prof) -> list:
    """GPU time of segquant's custom ops by the shapes of their first two inputs (codes ``(Sa, M, K)``, weight
    ``(N, K)``), with the kernel the GPU backend chose for each TMA-eligible shape and the host time of the calls:
    ``[[op, shapes, ms, calls, kernel, host_ms], ...]``, ``kernel`` (``tiled``, ``tma``, ``tma_split_tail``,
    ``tma_halves_tail``, ...) ``None`` where the shape was not eligible (or the op is not the scaled GEMM);
    ``host_ms`` the CPU time inside the op's calls (dispatch, routing, Triton's launch; the profiler adds a little),
    what a forward without a CUDA graph waits for where the host is the slower side."""
    import triton

    from segquant.kernels.gpu import ops

    kernel_by_shape = {(key[2], tuple(key[3])): kernel for (key, _candidates), kernel in ops._FASTEST.items()}
    rows = []
    for event in prof.key_averages(group_by_input_shape=True):
        if not event.key.startswith("segquant::") or event.device_time_total <= 0:
            continue
        shapes = [list(s) for s in event.input_shapes[:2]]
        m_bucket = triton.next_power_of_2(shapes[0][1]) if len(shapes[0]) == 3 else None  # as ops' key
        kernel = kernel_by_shape.get((m_bucket, tuple(shapes[1]))) if len(shapes) > 1 else None
        rows.append([event.key, shapes, round(event.device_time_total / 1e3, 3), event.count, kernel,
                     round(event.cpu_time_total / 1e3, 3)])
    return sorted(rows, key=lambda r: -r[2])


def compile_cache_counts() -> dict:
    """Hits and misses of Inductor's and AOT autograd's compile caches during the first call."""
    return {name: n for name, n in {**counters["inductor"], **counters["aot_autograd"]}.items() if "cache" in name}


def compile_seconds(at_least: float = 0.5) -> dict:
    """Where the first call's compilation went: the compiler's timed phases (summed over graphs) of ``at_least``
    seconds or more, e.g. dynamo's tracing, AOT autograd, Inductor's lowering and code generation."""
    names, values = compile_times(repr="csv", aggregate=True)
    return {name: round(float(v), 1) for name, v in zip(names, values) if float(v) >= at_least}


def model_bytes(model) -> int:
    """Bytes of the model's parameters and buffers (each storage once; packed buffers included)."""
    storages = {}
    for t in (*model.parameters(), *model.buffers()):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(storages.values())


def run_variant(name: str, variant: str, iters: int, compile_mode: str | None = None, profile: bool = False,
                max_image_size: int | None = None) -> dict:
    from segquant.kernels.gpu import ops, plan

    # torchao's configs change Inductor's settings and the float32 matmul precision for the whole process: the
    # variants that follow one must not inherit them
    saved_inductor, precision = torch._inductor.config.save_config(), torch.get_float32_matmul_precision()
    try:
        if MULTI_KERNEL in variant:
            torch._inductor.config.triton.multi_kernel = 1
        bias_after = (mock.patch.object(plan, "static_fp8_gemm", fp8_bias_after_product) if BIAS_AFTER in variant
                      else contextlib.nullcontext())
        with ops.switched(**switches_of(variant)), bias_after:
            return _run_prepared(name, variant, iters, compile_mode, profile, max_image_size)
    finally:
        torch._inductor.config.load_config(saved_inductor)
        torch.set_float32_matmul_precision(precision)


def allocated_after_collection() -> int:
    """Bytes allocated on the GPU once Python's garbage and cuBLAS's workspaces (those of an error check) are freed."""
    gc.collect()
    clear_cublas = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
    if clear_cublas is not None:
        clear_cublas()
    torch.cuda.empty_cache()
    return torch.cuda.memory_allocated()


def _run_prepared(name: str, variant: str, iters: int, compile_mode: str | None, profile: bool,
                  max_image_size: int | None) -> dict:
    leftover = allocated_after_collection()  # what earlier variants of this process still hold
    model, example = build(name)
    freed = crop_position_tables(model, max_image_size) if max_image_size else 0  # SD3's table: every variant alike
    base = base_of(variant)
    eager = output(model, example) if base == "bf16_compiled" else None  # the floor of the model-level error
    facts = prepare(base, model, example, compile_mode, sigmoid_gelu=SIGMOID_GELU in variant)
    if freed:
        facts["position_table_freed_gib"] = round(freed / 2**30, 3)
    base = allocated_after_collection()  # the model's weights (and the small example inputs)
    torch.cuda.reset_peak_memory_stats()
    if not variant.startswith("torchao"):  # its tensor subclasses have no plain storage
        facts["model_tensor_gib"] = round(model_bytes(model) / 2**30, 3)
    stage(f"{variant}: prepared")
    counters.clear()
    compilation_time_metrics.clear()
    first, times = timed_calls(model, example, iters)
    times.sort()
    # graphs dynamo compiled (a list of blocks sharing one graph: a few; one per block: recompiled per block)
    facts["dynamo"] = {"graphs": counters["stats"]["unique_graphs"],
                       "graph_breaks": sum(counters["graph_break"].values()),
                       "compile_cache": compile_cache_counts(),
                       "seconds": compile_seconds()}
    stage(f"{variant}: timed, first call {first:.1f} s, {facts['dynamo']}")
    if eager is not None:
        facts["rel_err_compiled_vs_eager"] = float((output(model, example) - eager).norm() / eager.norm())
        del eager
    peak_extra = torch.cuda.max_memory_allocated() - base
    try:
        facts["graph_ms"] = round(graph_ms(model, example, iters), 2)
    except Exception as error:  # a forward that cannot be captured: say so, keep the eager numbers
        facts["graph_error"] = f"{type(error).__name__}: {error}"[:300]
    stage(f"{variant}: graph {facts.get('graph_ms')}")
    if profile:
        facts["profile"] = kernel_profile(model, example)
        stage(f"{variant}: kernels {json.dumps(facts['profile'])}")
    result = dict(model=name, variant=variant, first_call_s=round(first, 1),
                  median_ms=round(times[len(times) // 2], 2), min_ms=round(times[0], 2),
                  weight_gib=round((base - leftover) / 2**30, 3), leftover_gib=round(leftover / 2**30, 3),
                  peak_extra_gib=round(peak_extra / 2**30, 3), **facts)
    del model, example
    gc.collect()
    torch.cuda.empty_cache()
    torch._dynamo.reset()
    return result


def smoke(name: str, variants: list[str]) -> None:
    """CPU check of the segquant variants on the small config: quantize, the "gpu" backend's layout and op
    (its CPU kernel is the pure-torch twin; the CUDA check is bypassed) against the emulated backend, and
    a fullgraph regional compile (dynamo only); and that the per-layer checks of the GPU run (:func:`layer_errors`)
    run."""
    from segquant import quantize
    from segquant.pipeline.regional_compile import compile_repeated_blocks

    for variant in [v for v in variants if v.startswith("sq_")]:
        model, example = build(name, "cpu", torch.float32, small=True)
        base = base_of(variant)
        with torch.inference_mode():
            quantize(model, [example], segquant_config(base), example=example)
            emulated = model(**example)[0]
            with mock.patch("segquant.kernels.gpu.backend._device_problem", return_value=None):
                checks = layer_errors(model, example)  # leaves the gpu backend set
            gpu_twin = model(**example)[0]
            if SIGMOID_GELU in variant:
                print(f"smoke {name} {variant}: {sigmoid_form_gelus(model)} GELUs in the sigmoid form, output moved by "
                      f"{float((model(**example)[0] - gpu_twin).abs().max()):.2e}")
            compile_repeated_blocks(model, fullgraph=True, backend="eager")
            compiled = model(**example)[0]
        torch._dynamo.reset()
        rel = float((gpu_twin - emulated).norm() / emulated.norm())
        print(f"smoke {name} {variant}: gpu layout (CPU twin) vs emulated rel.err {rel:.2e}; "
              f"compiled vs eager max diff {float((compiled - gpu_twin).abs().max()):.2e}")
        print(f"smoke {name} {variant}: layer checks {','.join(sorted(checks))}")


def inductor_settings(spec: str) -> dict:
    """``"a=True,b=3"`` -> ``{"a": True, "b": 3}``; an unknown ``torch._inductor.config`` name raises."""
    import ast

    import torch._inductor.config as inductor_config

    settings = {}
    for item in filter(None, spec.split(",")):
        name, _, value = item.partition("=")
        if not hasattr(inductor_config, name):
            raise SystemExit(f"--inductor: torch._inductor.config has no setting {name!r}")
        settings[name] = ast.literal_eval(value)
    return settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["sd35", "flux"], default="sd35")
    parser.add_argument("--variants", default="all", help=f"comma list of {VARIANTS} or 'all'")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--json", default=None)
    parser.add_argument("--compile-mode", default=None,
                        help="torch.compile mode of the blocks, e.g. reduce-overhead (per-block CUDA graphs)")
    parser.add_argument("--smoke", action="store_true", help="CPU check of the sq_* variants on a small config")
    parser.add_argument("--profile", action="store_true", help="GPU time per kernel of one call (torch.profiler)")
    parser.add_argument("--max-image-size", type=int, default=None,
                        help="crop SD3's position table to images of up to this many pixels in every variant "
                             "(segquant.crop_position_tables; the weight-memory comparison without diffusers' table "
                             "for 6144² images)")
    parser.add_argument("--inductor", default="", help="torch._inductor.config settings for every variant, e.g. "
                        "coordinate_descent_tuning=True (comma-separated NAME=PYTHON_LITERAL)")
    parser.add_argument("--fp8-model-check", action="store_true",
                        help="also compare the GPU with the emulated backend summing FP8 as the tensor cores' "
                             "model does")
    opts = parser.parse_args()
    FP8_MODEL_CHECK["enabled"] = opts.fp8_model_check or opts.smoke
    logging.basicConfig(level=logging.WARNING)
    for name, value in inductor_settings(opts.inductor).items():
        setattr(torch._inductor.config, name, value)
    variants = VARIANTS if opts.variants == "all" else opts.variants.split(",")
    if opts.smoke:
        return smoke(opts.model, variants)
    results = []
    for variant in variants:
        try:
            results.append(run_variant(opts.model, variant, opts.iters, opts.compile_mode, opts.profile,
                                       opts.max_image_size))
        except Exception as error:  # a failing variant must not hide the others' numbers
            logging.exception("variant %s failed", variant)
            results.append(dict(model=opts.model, variant=variant, error=f"{type(error).__name__}: {error}"))
        print(json.dumps(results[-1]), flush=True)
        if opts.json:
            with open(opts.json, "w") as f:
                json.dump(results, f, indent=1)
    ref = next((r["median_ms"] for r in results if r["variant"] == "bf16_compiled" and "median_ms" in r), None)
    print(f"\n{torch.cuda.get_device_name()}  torch {torch.__version__}  model {opts.model}")
    graph_ref = next((r.get("graph_ms") for r in results if r["variant"] == "bf16_compiled"), None)
    print(f"{'variant':<14} {'first s':>8} {'median ms':>10} {'vs bf16c':>9} {'graph ms':>9} {'vs bf16c':>9} "
          f"{'weights GiB':>11} {'peak+ GiB':>9}")
    for r in results:
        if "median_ms" not in r:
            print(f"{r['variant']:<14} FAILED {r['error'][:90]}")
            continue
        speed = f"{ref / r['median_ms']:.2f}x" if ref else "-"
        graph = r.get("graph_ms", "-")
        graph_speed = f"{graph_ref / graph:.2f}x" if graph_ref and "graph_ms" in r else "-"
        print(f"{r['variant']:<14} {r['first_call_s']:>8} {r['median_ms']:>10} {speed:>9} {graph:>9} {graph_speed:>9} "
              f"{r['weight_gib']:>11} {r['peak_extra_gib']:>9}")


if __name__ == "__main__":
    main()
