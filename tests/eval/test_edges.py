"""Edge F1 against Canny controls, and the harness with control images (tiny stock SD3 ControlNet pipeline)."""

import json

import numpy as np
import pytest
import torch

cv2 = pytest.importorskip("cv2", reason="edge F1 needs OpenCV: pip install 'segquant[control]'")

from segquant.data.canny import canny_edges  # noqa: E402
from segquant.eval.edges import edge_f1  # noqa: E402


def box(shift: int = 0, size: int = 32) -> np.ndarray:
    img = np.zeros((size, size), np.uint8)
    img[8:24, 8 + shift: 24 + shift] = 200
    return img


def as_image(grey: np.ndarray) -> torch.Tensor:
    """uint8 (H, W) -> float (1, 3, H, W) in [0, 1]."""
    return torch.from_numpy(grey).float().div(255).expand(3, -1, -1).unsqueeze(0)


def test_f1_is_one_for_the_same_edges_and_drops_with_distance():
    control = as_image(canny_edges(box()))
    assert edge_f1(as_image(box()), control).item() == pytest.approx(1.0)
    near = edge_f1(as_image(box(shift=1)), control)
    assert near.item() > 0.6  # the shifted box's vertical sides match within 1 px; the horizontal ones lie on
    assert edge_f1(as_image(box(shift=1)), control, tolerance=0).item() < near.item()
    assert edge_f1(as_image(box(shift=6)), control).item() < near.item() - 0.2


def test_empty_maps_and_shape_checks():
    blank = torch.zeros(2, 3, 32, 32)
    controls = torch.cat([torch.zeros(1, 3, 32, 32), as_image(canny_edges(box()))])
    assert edge_f1(blank, controls).tolist() == [1.0, 0.0]  # both empty: 1; only the control has edges: 0
    with pytest.raises(ValueError, match="same count and height x width"):
        edge_f1(blank, torch.zeros(2, 3, 16, 16))


def test_harness_with_controls_scores_edge_f1_and_shows_the_control(tmp_path):
    pytest.importorskip("matplotlib")
    from segquant.eval.harness import EvalConfig, evaluate
    from segquant.eval.report import write_report
    from segquant.models.tiny_pipelines import build_tiny_pipeline, tiny_prompt_inputs

    pipe = build_tiny_pipeline("sd3_controlnet")

    def encode_prompt(prompt, *args, **kwargs):  # the tiny pipeline has no text encoders: hashed embeddings
        parts = [tiny_prompt_inputs("sd3_controlnet", p) for p in prompt]
        cat = lambda key: torch.cat([p[key] for p in parts])  # noqa: E731
        return (cat("prompt_embeds"), cat("negative_prompt_embeds"), cat("pooled_prompt_embeds"),
                cat("negative_pooled_prompt_embeds"))

    pipe.encode_prompt = encode_prompt
    controls = torch.cat([as_image(canny_edges(box(s, 64))) for s in (0, 4, 8)])
    cfg = EvalConfig(prompts=["a", "b"], controls=controls[:2], calib_prompts=["c"], calib_controls=controls[2:],
                     num_inference_steps=2, batch_size=2, calib_batch_size=1, error_images=2, fid=False)
    result = evaluate(pipe, ["rtn_w8a8"], cfg, progress=False)
    rows = {r["config"]: r for r in result.rows}
    assert "error" not in rows["rtn_w8a8"]
    assert 0.0 <= rows["fp"]["edge_f1"] <= 1.0 and 0.0 <= rows["rtn_w8a8"]["edge_f1"] <= 1.0
    assert list(result.images) == ["control", "fp", "rtn_w8a8"] and torch.equal(result.images["control"], controls[:2])
    assert result.settings["controlnet"] is True
    paths = write_report(result, tmp_path)
    assert "edge F1" in paths["markdown"].read_text() and paths["grid"].is_file()


def test_eval_cli_checks_controlnet_options_before_any_work(tmp_path, capsys):
    from segquant.cli import main

    cases = [(["mmdit", "--control-data", str(tmp_path)], "--control-data is only used with --controlnet"),
             ([str(tmp_path), "--controlnet"], "needs --control-data"),
             ([str(tmp_path), "--controlnet", "--control-data", str(tmp_path), "--correction", "affiner"],
              "--correction is not supported with --controlnet")]
    for extra, message in cases:
        assert main(["eval", *extra, "--out", str(tmp_path / "r")]) == 2
        assert message in capsys.readouterr().err


def test_control_eval_inputs_from_a_control_folder(tmp_path):
    from segquant.data.canny import CannySettings
    from segquant.data.control import build_canny_dataset
    from segquant.eval.controlnet import control_eval_kwargs
    from segquant.models.tiny_pipelines import build_tiny_pipeline

    src = tmp_path / "src"
    (src / "animals").mkdir(parents=True)
    meta = {f"a{i}": {"category": "animals", "prompt": f"animal {i}"} for i in range(4)}
    (src / "meta_data.json").write_text(json.dumps(meta))
    for i in range(4):
        cv2.imwrite(str(src / "animals" / f"a{i}.png"), box(2 * i, 48))
    build_canny_dataset(src, tmp_path / "ctl", settings=CannySettings(resolution=40), progress=False)
    kw = control_eval_kwargs(build_tiny_pipeline("sdxl_controlnet"), tmp_path / "ctl", num_prompts=2, calib_prompts=1)
    assert kw["prompts"] == ["animal 0", "animal 1"] and kw["calib_prompts"] == ["animal 3"]
    assert kw["controls"].shape == (2, 3, 40, 40) and kw["calib_controls"].shape == (1, 3, 40, 40)
    assert kw["control_argument"] == "image" and kw["pipeline_kwargs"] == {"height": 40, "width": 40}
