"""Worker of test_gloo.py: the same script runs once as one process and once under
``torchrun --nproc-per-node 2`` (gloo); rank 0 saves what it got, the test compares the two outputs.

Usage: gloo_worker.py OUT_DIR. Writes into OUT_DIR:
  calib/            a calibration set of a tiny SD3 pipeline (5 prompts: 3 + 2 over two ranks)
  calib_memory.pt   the same set recorded in memory: [(record, info)]
  calib_one/        a set of one prompt (rank 1 records nothing)
  observers.pt      {layer: (min, max, rows_seen, sample, hessian)} of calibrate() with a GPTQ config
  quantized.pt      {config: state_dict} of the tiny SD3 transformer quantized on the set (5 batches):
                    w8a8_search, w4a8 (GPTQ), w8a8_search with sequential calibration, and
                    w8a8_search on one batch (rank 1 calibrates nothing)
  cli_quantized/    `segquant quantize sd3 --calib calib --config w8a8_search` (every rank calibrates, rank 0 writes)
  eval.pt           {"rows", "errors", "images"} of the harness on a tiny demo pipeline (4 images, 2 batches)
  failures-<rank>.json  what each rank saw of a step that fails on the last rank (all_ranks) and on
                    rank 0 (on_main)
"""

import copy
import json
import sys
from pathlib import Path

import torch

from segquant import quantize
from segquant.calib import UniformSampler, generate_calibrate_set, load_calibrate_set
from segquant.calibration import calibrate
from segquant.distributed import all_ranks, launch, on_main
from segquant.errors import DistributedError
from segquant.models.tiny_pipelines import build_tiny_pipeline, tiny_prompt_inputs
from segquant.plan import build_plan
from segquant.presets import preset_dict

PROMPTS = ["a red fox", "a blue car", "an old tree", "a small boat", "a green hat"]
SAMPLER = UniformSampler(max_timestep=4, sample_size=5, timestep_per_sample=2)
GPTQ = {"default": {"calib": {"type": "gptq"}, "weight_quant": {"type": "int4"}}}
SEQUENTIAL = preset_dict("w8a8_search")
SEQUENTIAL["default"]["calib"] = {"sequential": True}
CONFIGS = {"w8a8_search": "w8a8_search", "w4a8": "w4a8", "w8a8_search_sequential": SEQUENTIAL}


def calibration_sets(out: Path, main: bool):
    pipe = build_tiny_pipeline("sd3")
    items = [tiny_prompt_inputs("sd3", p) for p in PROMPTS]
    kwargs = dict(guidance_scale=2.0, progress=False)
    generate_calibrate_set(pipe, SAMPLER, items, "transformer", dump_path=out / "calib", chunk_size=3, **kwargs)
    memory = generate_calibrate_set(pipe, SAMPLER, items, "transformer", **kwargs)
    one = UniformSampler(max_timestep=4, sample_size=1, timestep_per_sample=2)  # fewer prompts than ranks
    generate_calibrate_set(pipe, one, items, "transformer", dump_path=out / "calib_one", **kwargs)
    if main:
        torch.save([(memory[i], memory.info(i)) for i in range(len(memory))], out / "calib_memory.pt")
    return pipe.transformer


def quantized_models(denoiser, out: Path, main: bool) -> None:
    loader = load_calibrate_set(out / "calib").get_dataloader(batch_size=2)  # 5 batches: ranks get 3 and 2
    example = next(iter(loader))
    plan = build_plan(denoiser, GPTQ, example)
    observers = calibrate(denoiser, plan, loader)
    stats = {name: (o.min, o.max, o.rows_seen, o.sample, o.hessian.hessian()) for name, o in observers.items()}
    states = {label: quantize(copy.deepcopy(denoiser), loader, config, example=example).state_dict()
              for label, config in CONFIGS.items()}
    one_batch = [example]  # fewer batches than ranks
    states["one_batch"] = quantize(copy.deepcopy(denoiser), one_batch, "w8a8_search", example=example).state_dict()
    if main:
        torch.save(stats, out / "observers.pt")
        torch.save(states, out / "quantized.pt")


def cli_quantize(out: Path) -> None:
    from segquant.cli import main as cli

    code = cli(["quantize", "sd3", "--calib", str(out / "calib"), "--config", "w8a8_search", "--batch-size", "2",
                "-o", str(out / "cli_quantized")])
    assert code == 0


def evaluation(out: Path, main: bool) -> None:
    from segquant.demo import models
    from segquant.demo.classifier import FashionClassifier
    from segquant.demo.pipeline import SegQuantDemoPipeline, _text_encoder, make_scheduler
    from segquant.eval.harness import EvalConfig, evaluate

    torch.manual_seed(0)
    denoiser = models.build_denoiser("mmdit", dict(num_layers=1, num_attention_heads=2, caption_projection_dim=64,
                                                   dual_attention_layers=())).eval()
    classifier = FashionClassifier().eval()
    tokenizer, encoder = _text_encoder()
    pipe = SegQuantDemoPipeline(scheduler=make_scheduler(), tokenizer=tokenizer, text_encoder=encoder,
                                transformer=denoiser)
    pipe.set_progress_bar_config(disable=True)
    cfg = EvalConfig(prompts=["a bag", "a coat", "a sandal", "a dress"], labels=[8, 4, 5, 3], num_inference_steps=2,
                     batch_size=2, calib_prompts=["a shirt", "a boot", "a bag"], calib_batch_size=2, error_images=4,
                     fid=True, classifier=classifier)
    result = evaluate(pipe, ["rtn_w8a8"], cfg, progress=False)
    if main:
        torch.save({"rows": result.rows, "errors": result.errors, "images": result.images}, out / "eval.pt")


def failures(out: Path, world) -> None:
    def fails_on(rank):
        def step():
            if world.rank == rank:
                raise ValueError(f"broken on rank {rank}")
            return "fine"

        return step

    seen = []
    for runner, rank in ((all_ranks, world.size - 1), (on_main, 0)):
        try:
            seen.append(runner(fails_on(rank), "the test step"))
        except (DistributedError, ValueError) as exc:
            seen.append(f"{type(exc).__name__}: {exc}")
    (out / f"failures-{world.rank}.json").write_text(json.dumps(seen))


def main(out: str) -> None:
    torch.set_num_threads(1)
    out = Path(out)
    with launch("cpu") as (world, _device):
        denoiser = calibration_sets(out, world.is_main)
        quantized_models(denoiser, out, world.is_main)
        cli_quantize(out)
        evaluation(out, world.is_main)
        failures(out, world)


if __name__ == "__main__":
    main(sys.argv[1])
