"""Report notes: the real calibration step count, FID/KID marked indicative on small sets, negative KID."""

import torch

from segquant.eval.harness import EvalConfig, EvalResult
from segquant.eval.report import markdown_section, markdown_table, result_notes


def result(n_prompts, calib_steps, kid):
    cfg = EvalConfig(prompts=["p"] * n_prompts, num_inference_steps=10, calib_steps=calib_steps, calib_prompts=["c"] * 8)
    rows = [{"config": "fp"}, {"config": "w8a8", "psnr": 30.0, "fid": 1.5, "kid": kid}]
    settings = {**cfg.settings(), "denoiser_class": "Toy", "pipeline": "ToyPipeline"}
    return EvalResult(rows, {"fp": torch.zeros(1, 1, 2, 2)}, {}, [], cfg.prompts, settings)


def test_calibration_steps_are_stated():
    every = markdown_section(result(20, None, 0.01), "t")
    assert "8 prompts × 10 of 10 denoising steps recorded (every step)" in every and "None" not in every
    assert "8 prompts × 4 of 10 denoising steps recorded." in result_notes(result(20, 4, 0.01))[0]


def test_small_sets_mark_fid_kid_indicative_and_negative_kid_is_explained():
    small = result(20, None, -0.002)
    section = markdown_section(small, "t")
    assert "FID ↓ †" in section and "KID ↓ †" in section and "from 20 images per set are indicative" in section
    assert "| ≤0 |" in section and "-0.002" not in section and "unbiased MMD²" in section
    large = result(500, None, 0.003)
    assert "†" not in markdown_section(large, "t") and "| 0.0030 |" in markdown_table(large.rows)


def test_fp8_rows_say_how_their_gemms_were_summed():
    plain = result(20, None, 0.01)
    assert not any("FP8" in note for note in result_notes(plain))
    plain.rows[1]["granularity"] = "W fpe4m3 per-tensor, A fpe4m3 static per-tensor"
    assert "summed exactly in float32" in result_notes(plain)[1]
    plain.settings["fp8_numerics"] = "tensor-cores"
    assert "as Hopper's tensor cores sum them" in result_notes(plain)[1]
