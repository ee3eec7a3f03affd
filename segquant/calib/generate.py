"""``generate_calibrate_set``: run a diffusers pipeline on prompts and record a module's calls.

Each prompt item is one trajectory (one pipeline call) with ``prompt_id`` = its position in the
loader and ``generator = torch.Generator("cpu").manual_seed(seed + prompt_id)`` (the same seeding as
:func:`segquant.pipeline.generate`), so runs are reproducible and an interrupted run can resume: it
re-runs the first unfinished prompt, drops the records already stored, and continues, giving the
same set as an uninterrupted run.

Under ``torchrun`` (see :mod:`segquant.distributed`) every rank records a contiguous share of the
prompts, keeping their ids and seeds, into its own folder (:mod:`segquant.calib.sharded`) and rank 0
writes the merged index; in memory, the ranks' records are gathered. Either way every rank gets the
set a single process would have recorded.
"""

from __future__ import annotations

import itertools
import logging
import os
from typing import Any, Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

from segquant import distributed
from segquant.calib.dataset import CalibrationSet, load_calibrate_set
from segquant.calib.identity import digest, jsonable
from segquant.calib.records import tree_copy
from segquant.calib.recorder import Recorder
from segquant.calib.samplers import TimestepSampler
from segquant.calib.sharded import merge_rank_sets, prepare_merged, rank_folder, rank_settings
from segquant.calib.storage import ShardWriter, prepare_dump
from segquant.devices import model_device, move_to
from segquant.errors import CalibrationError, ConfigError
from segquant.pipeline.glue import call_parameters, iter_prompt_items, pipeline_call_kwargs, resolve_layer
from segquant.pipeline.seeding import seeded_global_rng
from segquant.pipeline.steps import StepInfo

logger = logging.getLogger(__name__)


def _call_kwargs(pipe: Any, sampler: TimestepSampler, extra: dict[str, Any]) -> dict[str, Any]:
    kwargs = dict(extra)
    steps = kwargs.setdefault("num_inference_steps", sampler.max_timestep)
    if steps != sampler.max_timestep:
        raise ConfigError(
            f"num_inference_steps: {steps} differs from the sampler's max_timestep {sampler.max_timestep}; "
            "give one of them"
        )
    params = call_parameters(pipe)
    if params is not None and "num_inference_steps" not in params:
        kwargs.pop("num_inference_steps")
    if params is None or "output_type" in params:
        kwargs.setdefault("output_type", "latent")  # no VAE decode: only the denoiser inputs matter
    if "generator" in kwargs:
        logger.warning("a shared generator= makes trajectories depend on prompt order; resume may differ")
    return kwargs


def _settings(pipe: Any, sampler, name: str, layer: nn.Module, call_kwargs: dict, seed: int, chunk: int, compress: bool):
    scheduler = getattr(pipe, "scheduler", None)
    config = getattr(layer, "config", None)
    param = next(layer.parameters(), None)
    return {
        "sampler": sampler.to_dict(),
        "pipeline": {
            "class": type(pipe).__name__,
            "scheduler": type(scheduler).__name__,
            "scheduler_config": jsonable(dict(getattr(scheduler, "config", {}) or {})),
        },
        "calib_layer": {
            "name": name,
            "class": type(layer).__name__,
            "config": jsonable(dict(config)) if config is not None else None,
            "dtype": str(param.dtype) if param is not None else None,
        },
        "pipeline_kwargs": jsonable(call_kwargs),
        "seed": seed,
        "chunk_size": chunk,
        "compress": bool(compress),
    }


class _MemoryWriter:
    def __init__(self, settings: dict[str, Any]):
        self.settings, self.records, self.infos = settings, [], []

    def add(self, record: dict[str, Any], info: StepInfo) -> None:
        self.records.append(record)
        self.infos.append(info)

    def end_prompt(self, *args: Any) -> None:
        pass


def _open_writer(dump_path, chunk_size, compress, settings, overwrite):
    """``(writer, resume_manifest, complete)`` for the run."""
    if dump_path is None:
        return _MemoryWriter(settings), None, False
    manifest = prepare_dump(dump_path, settings, overwrite)
    if manifest is not None and manifest["status"] == "complete":
        return None, manifest, True
    if manifest is not None:
        logger.info("resuming the calibration set in %s at %d records", dump_path, manifest["num_records"])
    return ShardWriter(dump_path, chunk_size, compress, settings, resume=manifest), manifest, False


def _resume_point(manifest: dict | None) -> tuple[list[dict[str, Any]], int]:
    """Completed prompts of an interrupted run and how many records of the next prompt are stored."""
    if manifest is None:
        return [], 0
    done = manifest["prompts"]
    return done, manifest["num_records"] - sum(p["records"] for p in done)


def generate_calibrate_set(
    model: Any,
    sampler: TimestepSampler,
    sample_dataloader: Iterable[Any],
    calib_layer: str | nn.Module,
    dump_path: str | os.PathLike | None = None,
    chunk_size: int = 400,
    compress: bool = True,
    *,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
    record_device: str | torch.device = "cpu",
    **pipeline_kwargs: Any,
) -> CalibrationSet:
    """Record ``calib_layer``'s calls while ``model`` (a diffusers pipeline) samples the prompts.

    Args:
        model: a diffusers pipeline (or any pipeline with a ``scheduler`` whose denoiser is an nn.Module).
        sampler: which steps to record (``max_timestep`` = ``num_inference_steps``, ``sample_size``
            prompts, ``timestep_per_sample`` steps each).
        sample_dataloader: iterable of prompt strings, lists of strings, or dicts of pipeline-call
            arguments (e.g. ``prompt_embeds``, ``pooled_prompt_embeds``, ``control_image``); one
            trajectory per string/dict. The first ``sampler.sample_size`` items are used.
        calib_layer: module to record, as an object, a component name (``"transformer"``, ``"unet"``,
            ``"controlnet"``) or a dotted path.
        dump_path: folder for shards + manifest; ``None`` keeps the set in memory.
        chunk_size: records per shard.
        compress: zstandard-compress shards.
        seed: trajectory ``i`` uses ``torch.Generator("cpu").manual_seed(seed + i)``.
        overwrite: replace a set in ``dump_path`` made with other settings.
        progress: show a tqdm bar (records, records/s, ETA).
        record_device: where recorded tensors are kept before writing.
        **pipeline_kwargs: shared pipeline-call arguments (``guidance_scale``,
            ``controlnet_conditioning_scale``, ...). ``output_type`` defaults to ``"latent"``.
    Returns:
        The :class:`CalibrationSet` (streamed from ``dump_path`` when given).
    """
    if not isinstance(sampler, TimestepSampler):
        raise ConfigError(f"sampler: expected a TimestepSampler, got {type(sampler).__name__}")
    name, layer = resolve_layer(model, calib_layer)
    call_kwargs = _call_kwargs(model, sampler, pipeline_kwargs)
    settings = _settings(model, sampler, name, layer, call_kwargs, seed, chunk_size, compress)
    if distributed.current().parallel:
        progress = progress and distributed.current().is_main
        run = (model, sampler, name, layer, call_kwargs, seed, progress, record_device)
        return _generate_sharded(run, sample_dataloader, dump_path, chunk_size, compress, settings, overwrite)
    writer, manifest, complete = _open_writer(dump_path, chunk_size, compress, settings, overwrite)
    if complete:
        logger.info("calibration set in %s is already complete", dump_path)
        return load_calibrate_set(dump_path)
    _record_all(model, sampler, name, layer, sample_dataloader, writer, manifest, call_kwargs, seed, progress,
                record_device)
    if dump_path is None:
        return CalibrationSet.from_records(writer.records, writer.infos, settings)
    writer.close()
    return load_calibrate_set(dump_path)


def _generate_sharded(run: tuple, loader, dump_path, chunk_size: int, compress: bool, settings: dict,
                      overwrite: bool) -> CalibrationSet:
    """The set of ``generate_calibrate_set`` recorded by every rank of the process group (module docstring).
    ``run``: ``(pipe, sampler, name, layer, call_kwargs, seed, progress, record_device)``."""
    world, sampler = distributed.current(), run[1]
    items = list(itertools.islice(iter_prompt_items(loader), sampler.sample_size))
    ids = distributed.shard_range(len(items), world)
    _check_count(len(items), sampler.sample_size)
    if dump_path is None:
        writer = _MemoryWriter(settings)
        distributed.all_ranks(lambda: ids and _record_all(*run[:4], items, writer, None, *run[4:], ids=ids),
                              "recording the calibration set")
        pairs = distributed.gather_list(list(zip(writer.records, writer.infos)))
        return CalibrationSet.from_records([r for r, _ in pairs], [i for _, i in pairs], settings)
    if distributed.on_main(lambda: prepare_merged(dump_path, settings, overwrite), "preparing dump_path"):
        return load_calibrate_set(dump_path)

    def record() -> None:
        folder = rank_folder(dump_path, world.rank)
        writer, manifest, complete = _open_writer(folder, chunk_size, compress, rank_settings(settings, ids, world),
                                                  overwrite)
        if not complete:
            if ids:
                _record_all(*run[:4], items, writer, manifest, *run[4:], ids=ids)
            writer.close()

    distributed.all_ranks(record, "recording the calibration set")
    distributed.on_main(lambda: merge_rank_sets(dump_path, settings, world.size), "merging the rank sets")
    return load_calibrate_set(dump_path)


def _check_count(count: int, sample_size: int) -> None:
    if count < sample_size:
        logger.warning("sample_dataloader gave %d prompts, fewer than sample_size %d", count, sample_size)
    if count == 0:
        raise CalibrationError("sample_dataloader yielded no prompts")


def _record_all(pipe, sampler, name, layer, loader, writer, manifest, call_kwargs, seed, progress, device,
                ids: range | None = None) -> None:
    """Record the prompts ``ids`` (default: all ``sample_size``) of ``loader``, resuming from ``manifest``."""
    ids = range(sampler.sample_size) if ids is None else ids
    done, stored = _resume_point(manifest)
    bar = tqdm(total=len(ids) * sampler.timestep_per_sample, unit="rec", desc="calibrate", disable=not progress)
    bar.update(sum(p["records"] for p in done) + stored)
    state = {"skip": 0}

    def sink(call: dict[str, Any], info: StepInfo) -> None:
        if state["skip"] > 0:  # already stored by the interrupted run
            state["skip"] -= 1
            return
        writer.add(tree_copy(call, device), info)
        bar.update(1)

    count = 0
    with Recorder(pipe, layer, sink) as recorder:
        for prompt_id, item in enumerate(iter_prompt_items(loader)):
            if prompt_id >= ids.stop:
                break
            count, position = prompt_id + 1, prompt_id - ids.start
            if position < 0:
                continue
            item_digest = digest(item)
            if position < len(done):
                if done[position]["digest"] != item_digest:
                    raise CalibrationError(f"prompt {prompt_id} differs from the interrupted run being resumed")
                continue
            state["skip"] = stored if position == len(done) else 0
            kwargs = move_to(pipeline_call_kwargs(item, call_kwargs), model_device(layer))  # embeddings follow
            kwargs.setdefault("generator", torch.Generator("cpu").manual_seed(seed + prompt_id))
            with seeded_global_rng(seed + prompt_id):  # the pipeline's global-RNG draws too
                n = recorder.run(prompt_id, sampler.steps_for(prompt_id), kwargs)
            if state["skip"]:
                raise CalibrationError(f"prompt {prompt_id}: the interrupted run stored more records than a re-run makes")
            writer.end_prompt(prompt_id, item_digest, n)
            if position == 0:
                bar.total = len(ids) * n  # calls per step are known after the first prompt
    bar.close()
    _check_count(count, ids.stop)
