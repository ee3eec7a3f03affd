"""The GPU benchmark scripts' ``--smoke`` modes on the CPU: a device call is too scarce to find a broken script."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_script(args: list[str], **env_vars: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **env_vars}
    run = subprocess.run([sys.executable, *args], cwd=ROOT / "benchmarks", env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout


def test_gemm_benchmark_times_every_format_and_matches_the_twin(tmp_path):
    run_script(["gemm_w8a8.py", "--smoke", "--out", str(tmp_path), "--formats", "fp8,fp8_tensor,int8",
                "--host-profile"])
    rows = json.loads((tmp_path / "scaled_gemm.json").read_text())
    assert {(row["layer"], row["fmt"]) for row in rows} == {
        (layer, fmt) for layer in ("plain", "heads", "dual", "adaln") for fmt in ("fp8", "fp8_tensor", "int8")}
    assert all(row["rel_err_vs_twin"] == 0.0 for row in rows)
    assert all(row["gemm_rowwise_us"] > 0 for row in rows if row["fmt"] == "fp8_tensor")
    assert all(row["host_us"] > 0 and row["bf16_host_us"] > 0 and row["bf16_mm_no_bias_us"] > 0 for row in rows)
    assert all(row["host_op_us"] > 0 and row["host_no_dispatch_us"] > 0 for row in rows if row["fmt"] == "int8")
    assert "cumulative" in (tmp_path / "host_profile_plain_int8.txt").read_text()
    plain_tensor_wise = [row for row in rows if row["fmt"] == "fp8_tensor" and row["layer"] == "plain"]
    assert plain_tensor_wise and all(row["gemm_no_bias_us"] > 0 and row["gemm_tensorwise_us"] > 0
                                     for row in plain_tensor_wise)


def test_end_to_end_benchmark_smoke_matches_the_emulated_model():
    out = run_script(["e2e_w8a8.py", "--model", "flux", "--smoke",
                      "--variants", "bf16_compiled,sq_fp8_tensor_fused,sq_fp8_preset_fused,sq_int8_fused"])
    errors = re.findall(r"smoke flux (\S+): gpu layout \(CPU twin\) vs emulated rel.err (\S+); "
                        r"compiled vs eager max diff (\S+)", out)
    assert [variant for variant, *_ in errors] == ["sq_fp8_tensor_fused", "sq_fp8_preset_fused", "sq_int8_fused"], out
    assert all(float(rel) <= 1e-6 and float(diff) == 0.0 for _, rel, diff in errors), out
    checks = dict(re.findall(r"smoke flux (\S+): layer checks (\S+)", out))
    assert {variant: "layers_equal_tc" in keys for variant, keys in checks.items()} == {
        "sq_fp8_tensor_fused": True, "sq_fp8_preset_fused": True, "sq_int8_fused": False}, out  # FP8 layers only


def test_quantizer_benchmark_smoke_one_pass_kernel_matches_the_dynamic_quantizer():
    out = run_script(["quantize_elementwise.py", "--smoke"], TRITON_INTERPRET="1")
    assert out.count("compiled vs eager max diff") == 11, out
    one_pass = re.search(r"one-pass dynamic gelu=False: codes differing (\d+) of (\d+), scales max rel diff (\S+)", out)
    assert one_pass and one_pass.group(1) == "0" and float(one_pass.group(3)) == 0.0, out


def test_fp8_accumulation_probe_names_the_model_standing_in_for_the_gpu(tmp_path):
    run_script(["fp8_accumulation.py", "simulate", "--smoke", "--out", str(tmp_path)])
    assert "| plain (128) |" in (tmp_path / "simulate.md").read_text()
    run_script(["fp8_accumulation.py", "probe", "--smoke", "--out", str(tmp_path)])
    rows = json.loads((tmp_path / "probe.json").read_text())
    longest = max(row["k"] for row in rows)
    best = {(row["kernel"], row["codes"]): row["best"][0] for row in rows
            if row["k"] == longest and not row["kernel"].startswith("deployed")}
    kinds = ("benchmark", "wide")
    assert best == ({("model_g16_f13_promote_64", codes): [1.0, "g16_f13_promote_64"] for codes in kinds}
                    | {("model_g8_f14_fast_bf16", codes): [1.0, "g8_f14_fast"] for codes in kinds}
                    | {("epilogue, cuBLASLt tensor-wise", codes): [1.0, "acc·(sa·sb) + bias"] for codes in kinds})
    run_script(["fp8_accumulation.py", "fit", "--smoke", "--out", str(tmp_path), "--samples",
                str(tmp_path / "probe_samples.pt")])
    fitted = json.loads((tmp_path / "fit.json").read_text())
    assert {(row["kernel"], row["codes"]): row["best"][0] for row in fitted if row["k"] == longest} == {
        key: value for key, value in best.items() if not key[0].startswith("epilogue")}
    deployed = [row for row in rows if row["kernel"].startswith("deployed static layer")]
    assert len(deployed) == 2 and all(row["best"][0][0] == 1.0 > row["twin_equal"] for row in deployed)
    epilogues = [row["best"] for row in rows if row["kernel"].startswith("epilogue")]
    assert all(scores[1][0] < 1.0 for scores in epilogues)  # the float32 output tells the epilogues apart


def test_host_python_times_the_dispatch_and_every_route_wrapper():
    out = run_script(["host_python.py", "--iters", "50"])
    rows = dict(re.findall(r"^\| (.+?) \| ([\d.]+) \|$", out, re.MULTILINE))
    routes = {"tiled (ctx_proj, M = 512)", "persistent TMA (qkv_fused's K and N, M = 512)", "GEMV (adaln_plain, M = 1)"}
    assert set(rows) == ({"called directly", "torch.library.custom_op", "torch.library.define / impl"} | routes
                         | {f"{route}, replayed" for route in routes}), out
    assert all(float(us) > 0 for us in rows.values())
