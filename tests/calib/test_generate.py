"""generate_calibrate_set on tiny stock SD3 / FLUX / SDXL (+ ControlNet) pipelines and a custom one."""

import argparse
import copy

import pytest
import torch
from torch import nn

from segquant.calib import NormalSampler, StepListSampler, UniformSampler, generate_calibrate_set, load_calibrate_set
from segquant.calib.cli import add_calibrate_parser
from segquant.calib.storage import read_manifest
from segquant.errors import CalibrationError, ConfigError
from segquant.models.tiny_pipelines import TINY_DENOISER, build_tiny_pipeline, tiny_prompt_inputs

pytest.importorskip("diffusers")
PROMPTS = ["a red fox", "a blue car", "an old tree", "a small boat"]


def items(name, n=2):
    return [tiny_prompt_inputs(name, p) for p in PROMPTS[:n]]


def tensors_equal(a, b):
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(tensors_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(tensors_equal(x, y) for x, y in zip(a, b))
    return a == b


def assert_same_sets(a, b):
    assert len(a) == len(b)
    for i in range(len(a)):
        assert a.info(i) == b.info(i)
        assert tensors_equal(a[i], b[i]), f"record {i} differs"


@pytest.mark.parametrize("name", ["sd3", "flux", "sdxl"])
def test_records_are_the_sampler_steps_with_the_pipeline_timesteps(name):
    pipe = build_tiny_pipeline(name)
    sampler = NormalSampler(max_timestep=7, sample_size=2, timestep_per_sample=3, seed=0)
    timesteps_by_step = {}

    def user_callback(p, i, t, kwargs):  # the pipeline's own (step, timestep), independent of the recorder
        timesteps_by_step.setdefault(i, set()).add(float(t))
        return {}

    data = generate_calibrate_set(pipe, sampler, items(name), TINY_DENOISER[name], guidance_scale=3.0,
                                  callback_on_step_end=user_callback, progress=False)
    for pid in range(2):
        steps = [data.info(i).step_index for i in range(len(data)) if data.info(i).prompt_id == pid]
        assert steps == sampler.steps_for(pid)
    assert sampler.steps_for(0) != sampler.steps_for(1)  # normal sampler: per-prompt draws
    for i in range(len(data)):
        info, record = data.info(i), data[i]
        assert timesteps_by_step[info.step_index] == {info.timestep}
        assert info.timestep == pytest.approx(float(pipe.scheduler.timesteps[info.step_index]))
        passed = float(record["timestep"].reshape(-1)[0])
        assert passed * (1000.0 if name == "flux" else 1.0) == pytest.approx(info.timestep, rel=1e-5)


@pytest.mark.parametrize("name", ["sd3", "sdxl"])
def test_cfg_rows_are_uncond_then_cond(name):
    pipe = build_tiny_pipeline(name)
    item = tiny_prompt_inputs(name, "a red fox")
    data = generate_calibrate_set(pipe, UniformSampler(4, 1, 2), [item], TINY_DENOISER[name], guidance_scale=5.0, progress=False)
    for i in range(len(data)):
        text = data[i]["encoder_hidden_states"]
        assert data.info(i).branches == ("uncond", "cond") and text.shape[0] == 2
        assert torch.equal(text[0], item["negative_prompt_embeds"][0])
        assert torch.equal(text[1], item["prompt_embeds"][0])
    no_cfg = generate_calibrate_set(pipe, UniformSampler(4, 1, 2), [item], TINY_DENOISER[name], guidance_scale=1.0, progress=False)
    assert all(no_cfg.info(i).branches == ("cond",) for i in range(len(no_cfg)))


def test_flux_true_cfg_separate_calls_are_labelled():
    pipe = build_tiny_pipeline("flux")
    item = tiny_prompt_inputs("flux", "a red fox")
    neg = tiny_prompt_inputs("flux", "blurry")
    item.update(negative_prompt_embeds=neg["prompt_embeds"], negative_pooled_prompt_embeds=neg["pooled_prompt_embeds"])
    data = generate_calibrate_set(pipe, StepListSampler([1, 3], 4, 1), [item], "transformer", true_cfg_scale=2.0, progress=False)
    assert [(data.info(i).step_index, data.info(i).call_index, data.info(i).branches) for i in range(4)] == [
        (1, 0, ("cond",)), (1, 1, ("uncond",)), (3, 0, ("cond",)), (3, 1, ("uncond",))]
    assert torch.equal(data[0]["encoder_hidden_states"], item["prompt_embeds"])
    assert torch.equal(data[1]["encoder_hidden_states"], neg["prompt_embeds"])


def test_trajectory_stops_after_the_last_selected_step():
    pipe = build_tiny_pipeline("sd3")
    calls = []
    handle = pipe.transformer.register_forward_hook(lambda *a: calls.append(1))
    generate_calibrate_set(pipe, StepListSampler([0, 2], 8, 2), items("sd3"), "transformer", progress=False)
    handle.remove()
    assert len(calls) == 2 * 3  # steps 0..2 of each trajectory ran, steps 3..7 did not
    assert not pipe.transformer._forward_pre_hooks  # the recorder removed its hook
    assert "cache_context" not in pipe.transformer.__dict__


@pytest.mark.parametrize("compress", [True, False])
def test_dump_round_trips_bit_exactly(tmp_path, compress):
    pipe = build_tiny_pipeline("sdxl_controlnet")
    kwargs = dict(guidance_scale=2.0, controlnet_conditioning_scale=0.7, progress=False)
    memory = generate_calibrate_set(pipe, UniformSampler(4, 2, 2), items("sdxl_controlnet"), "unet", **kwargs)
    dumped = generate_calibrate_set(pipe, UniformSampler(4, 2, 2), items("sdxl_controlnet"), "unet",
                                    dump_path=tmp_path / "set", chunk_size=3, compress=compress, **kwargs)
    assert_same_sets(memory, dumped)
    assert_same_sets(memory, load_calibrate_set(tmp_path / "set"))
    assert len(memory[0]["down_block_additional_residuals"]) > 1  # ControlNet residuals recorded (nested list)
    manifest = read_manifest(tmp_path / "set")
    assert manifest["settings"]["pipeline"]["class"] == "StableDiffusionXLControlNetPipeline"
    assert manifest["settings"]["pipeline_kwargs"]["controlnet_conditioning_scale"] == 0.7
    assert manifest["settings"]["sampler"] == UniformSampler(4, 2, 2).to_dict()


def test_resume_after_interruption_gives_the_same_set(tmp_path):
    pipe = build_tiny_pipeline("sd3")
    sampler = UniformSampler(max_timestep=6, sample_size=4, timestep_per_sample=3)
    args = (pipe, sampler, items("sd3", 4), "transformer")
    reference = generate_calibrate_set(*args, guidance_scale=2.0, progress=False)
    calls = []

    def crash(*_):
        calls.append(1)
        if len(calls) == 16:  # prompt 2, step 3: mid-trajectory, after some shards were written
            raise KeyboardInterrupt

    handle = pipe.transformer.register_forward_hook(crash)
    with pytest.raises(KeyboardInterrupt):
        generate_calibrate_set(*args, dump_path=tmp_path, chunk_size=2, guidance_scale=2.0, progress=False)
    handle.remove()
    manifest = read_manifest(tmp_path)
    assert manifest["status"] == "incomplete" and 0 < manifest["num_records"] < len(reference)
    first_shard = tmp_path / manifest["shards"][0]["file"]
    stamp = first_shard.stat().st_mtime_ns
    resumed = generate_calibrate_set(*args, dump_path=tmp_path, chunk_size=2, guidance_scale=2.0, progress=False)
    assert first_shard.stat().st_mtime_ns == stamp  # kept, not rewritten
    assert_same_sets(reference, resumed)
    with pytest.raises(ConfigError, match="guidance_scale"):
        generate_calibrate_set(*args, dump_path=tmp_path, chunk_size=2, guidance_scale=3.0, progress=False)


def test_dump_load_quantize(tmp_path):
    from segquant import quantize
    from segquant.nn.seglinear import SegLinear

    pipe = build_tiny_pipeline("sd3")
    generate_calibrate_set(pipe, UniformSampler(5, 2, 3), items("sd3"), "transformer", dump_path=tmp_path,
                           chunk_size=4, guidance_scale=2.0, progress=False)
    data = load_calibrate_set(tmp_path)
    model = quantize(copy.deepcopy(pipe.transformer), data.get_dataloader(batch_size=2, shuffle=True))
    assert any(isinstance(m, SegLinear) for m in model.modules())
    with torch.no_grad():
        ref, out = pipe.transformer(**data[5])[0], model(**data[5])[0]
    snr = 10 * torch.log10(ref.pow(2).mean() / (out - ref).pow(2).mean())
    assert torch.isfinite(out).all() and 25.0 < snr < 200.0  # ~40 dB measured


@pytest.mark.parametrize("name, layer", [("sd3_controlnet", "controlnet"), ("sd3_controlnet", "transformer"),
                                         ("flux_controlnet", "transformer")])
def test_controlnet_pipelines_records_replay_in_batches(name, layer):
    pipe = build_tiny_pipeline(name)
    data = generate_calibrate_set(pipe, UniformSampler(4, 2, 2), items(name), layer, guidance_scale=2.0, progress=False)
    assert len(data) == 4
    module = getattr(pipe, layer)
    batch = next(iter(data.get_dataloader(batch_size=2)))
    with torch.no_grad():
        together = module(**batch)[0]
        alone = [module(**data[i])[0] for i in range(2)]
    first = lambda out: out[0] if isinstance(out, (list, tuple)) else out  # noqa: E731 (ControlNets return lists)
    torch.testing.assert_close(first(together), torch.cat([first(a) for a in alone]), rtol=1e-4, atol=1e-5)


def test_inner_layer_without_timestep_argument():
    pipe = build_tiny_pipeline("sd3")
    sampler = StepListSampler([1, 2], 5, 1)
    data = generate_calibrate_set(pipe, sampler, items("sd3", 1), "transformer.transformer_blocks.0",
                                  guidance_scale=2.0, progress=False)
    assert [data.info(i).step_index for i in range(len(data))] == [1, 2]
    assert set(data[0]) >= {"hidden_states", "encoder_hidden_states", "temb"}
    block = pipe.transformer.transformer_blocks[1]
    by_module = generate_calibrate_set(pipe, sampler, items("sd3", 1), block, guidance_scale=2.0, progress=False)
    assert by_module.settings["calib_layer"]["name"] == "transformer.transformer_blocks.1"


class ToyDenoiser(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 4)

    def forward(self, x, t, scale=1.0):
        return (self.proj(x) * scale * (t.float() / 1000.0),)


def test_custom_pipeline_with_positional_calls_and_ddim():
    from diffusers import DDIMScheduler, DiffusionPipeline

    class ToyPipeline(DiffusionPipeline):
        def __init__(self, denoiser, scheduler):
            super().__init__()
            self.register_modules(denoiser=denoiser, scheduler=scheduler)

        def __call__(self, prompt, num_inference_steps=10, generator=None):
            self.scheduler.set_timesteps(num_inference_steps)
            x = torch.randn(3, 4, generator=generator)
            for t in self.scheduler.timesteps:
                x = self.scheduler.step(self.denoiser(x, t)[0], t, x).prev_sample
            return x

    torch.manual_seed(0)
    pipe = ToyPipeline(ToyDenoiser(), DDIMScheduler())
    sampler = StepListSampler([0, 4, 9], 10, 2)
    data = generate_calibrate_set(pipe, sampler, ["a", "b"], pipe.denoiser, progress=False)
    assert [data.info(i).step_index for i in range(6)] == [0, 4, 9] * 2
    assert [data.info(i).timestep for i in range(3)] == [float(pipe.scheduler.timesteps[s]) for s in (0, 4, 9)]
    assert set(data[0]) == {"x", "t"} and data[0]["x"].shape == (3, 4)
    assert data.info(0).branches == ("cond",) * 3


def test_bad_arguments():
    pipe = build_tiny_pipeline("sd3")
    with pytest.raises(ConfigError, match="num_inference_steps"):
        generate_calibrate_set(pipe, UniformSampler(4, 1, 2), items("sd3", 1), "transformer", num_inference_steps=5)
    with pytest.raises(ConfigError, match="unet"):
        generate_calibrate_set(pipe, UniformSampler(4, 1, 2), items("sd3", 1), "unet")
    with pytest.raises(CalibrationError, match="never called at step"):
        generate_calibrate_set(pipe, StepListSampler([3], 4, 1), items("sd3", 1), "transformer",
                               sigmas=[1.0, 0.5, 0.25], progress=False)  # the pipeline runs only 3 steps


def test_cli_calibrate(tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red fox\na blue car\na tree\n")
    parser = argparse.ArgumentParser(prog="segquant")
    add_calibrate_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["calibrate", "tiny-flux", "--prompts", str(prompts), "--out", str(tmp_path / "out"),
                              "--steps", "4", "--sample-size", "2", "--timestep-per-sample", "2", "--chunk-size", "3",
                              "--pipeline-arg", "guidance_scale=4.5"])
    assert args.func(args) == 0
    assert "4 records" in capsys.readouterr().out
    data = load_calibrate_set(tmp_path / "out")
    assert [data.info(i).step_index for i in range(4)] == [0, 3, 0, 3]
    assert float(data[0]["guidance"][0]) == 4.5


def test_resume_across_processes_with_other_hash_seeds(tmp_path):
    """Killed (SIGKILL, records buffered in an unwritten shard) under one PYTHONHASHSEED, resumed under
    another, re-run when complete under a third: the same set as an uninterrupted run."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    worker = Path(__file__).with_name("resume_worker.py")
    root = Path(__file__).resolve().parents[2]

    def run_worker(seed, *args):
        env = {**os.environ, "PYTHONHASHSEED": str(seed), "PYTHONPATH": str(root)}
        return subprocess.run([sys.executable, str(worker), str(tmp_path), *map(str, args)], cwd=root, env=env,
                              capture_output=True, text=True, timeout=300)

    killed = run_worker(1, 16)  # prompt 2, step 3: 8 records made, 6 written in 2 shards, 2 buffered
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    manifest = read_manifest(tmp_path)
    assert manifest["status"] == "incomplete" and manifest["num_records"] == 6
    resumed = run_worker(2)
    assert resumed.returncode == 0, resumed.stderr
    assert read_manifest(tmp_path)["status"] == "complete"
    again = run_worker(3)  # the identical call on a complete set, in a new process
    assert again.returncode == 0, again.stderr
    assert again.stdout.split()[-1] == resumed.stdout.split()[-1] == "12"
    sys.path.insert(0, str(worker.parent))
    try:
        import resume_worker
    finally:
        sys.path.remove(str(worker.parent))
    reference = resume_worker.run(build_tiny_pipeline("sd3"))
    assert_same_sets(reference, load_calibrate_set(tmp_path))
