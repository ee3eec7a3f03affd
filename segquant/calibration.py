"""Step 2 of ``quantize``: run the model on calibration batches and collect per-layer input statistics.

A batch is a Tensor (``model(batch)``), a tuple/list of positional arguments (``model(*batch)``) or a
mapping of keyword arguments (``model(**batch)``); every sample of every batch is seen. Statistics are
running (see :mod:`segquant.observers`), so memory does not grow with the amount of calibration data.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from segquant import distributed
from segquant.enums import Calibrate
from segquant.devices import model_device, move_to
from segquant.errors import CalibrationError, SegQuantError
from segquant.observers import InputObserver
from segquant.plan import LayerPlan, QuantPlan

logger = logging.getLogger("segquant.calibrate")

SAMPLE_ROWS = 512
"""Input rows kept per layer for alpha search and percentile/MSE activation clipping."""


def run_batch(model: nn.Module, batch: Any) -> Any:
    """Call ``model`` on one calibration batch (Tensor, positional tuple/list, or kwargs mapping)."""
    batch = move_to(batch, model_device(model))
    if isinstance(batch, torch.Tensor):
        return model(batch)
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, (list, tuple)):
        return model(*batch)
    raise CalibrationError(f"calibration batch of type {type(batch).__name__}: expected a Tensor, a tuple of "
                           "positional arguments or a dict of keyword arguments")


def run_with_input_hooks(model: nn.Module, names: list[str], batch: Any,
                         on_input: Callable[[str, torch.Tensor], None]) -> None:
    """Run ``model`` on ``batch`` without gradients, calling ``on_input(name, x)`` with the input ``x`` of
    every call of each module in ``names``."""
    def hook_for(name: str):
        def hook(_module: nn.Module, args: tuple) -> None:  # returns None: the inputs stay untouched
            on_input(name, args[0])

        return hook

    handles = [model.get_submodule(name).register_forward_pre_hook(hook_for(name)) for name in names]
    try:
        with torch.no_grad():
            run_batch(model, batch)
    finally:
        for handle in handles:
            handle.remove()


def first_batch(calib_data_loader: Iterable) -> Any:
    """The first batch of a re-iterable loader (see :func:`split_first_batch` for one-shot iterators)."""
    for batch in calib_data_loader:
        return batch
    raise CalibrationError("the calibration loader is empty")


def is_one_shot(calib_data_loader: Iterable) -> bool:
    """True for an iterator or generator, which yields its batches only once (a list or DataLoader does not)."""
    return iter(calib_data_loader) is calib_data_loader


def split_first_batch(calib_data_loader: Iterable) -> tuple[Any, Iterable]:
    """``(first batch, loader)``, where the loader still yields every batch: a one-shot iterator gets its
    first batch put back in front, so graph capture never costs calibration a batch."""
    if not is_one_shot(calib_data_loader):
        return first_batch(calib_data_loader), calib_data_loader
    try:
        first = next(calib_data_loader)
    except StopIteration:
        raise CalibrationError("the calibration loader is empty") from None
    return first, itertools.chain([first], calib_data_loader)


def make_observer(layer: LayerPlan, device: torch.device) -> InputObserver:
    """The observer ``layer``'s conversion needs, computing on ``device`` (``cpu_storage``: GPTQ's Hessian
    is accumulated in CPU memory, each batch's ``x xᵀ`` still computed on ``device``)."""
    calib, opt = layer.config.calib, layer.config.opt
    needs_rows = opt.search_alpha.enable or calib.type in (Calibrate.PERCENTILE, Calibrate.MSE)
    return InputObserver(layer.name, layer.in_features, device=device, hessian=calib.type is Calibrate.GPTQ,
                         hessian_storage="cpu" if calib.cpu_storage else "device",
                         max_sample_rows=SAMPLE_ROWS if needs_rows else 0)


class _StopForward(Exception):
    """Raised by a hook to end a forward pass early once everything needed has been observed."""


def calibrate(model: nn.Module, plan: QuantPlan, calib_data_loader: Iterable, tmp_device: Any = None,
              verbose: bool = False, layers: list[str] | None = None,
              stop_after: nn.Module | None = None) -> dict[str, InputObserver]:
    """Run ``model`` over the loader and return an :class:`InputObserver` per enabled layer.

    Statistics live on ``tmp_device`` when given, else on each layer's device. ``layers`` restricts
    calibration to those layer names and ``stop_after`` ends each forward pass after that module ran
    (both used by sequential calibration). A batch the model fails on raises :class:`CalibrationError`
    naming the batch, its shapes and the last quantized layer reached; layers whose inputs were all
    zero are logged as a warning (their scales would be meaningless).

    Under ``torchrun`` (an initialized process group of several ranks, see :mod:`segquant.distributed`)
    every rank passes the same loader, runs its share of the batches (``distributed.rank_batches``) and
    the observers are reduced across ranks before they are returned: min / max, counts and the reservoir
    sample are bitwise those of one process, GPTQ Hessians equal within float32 rounding.
    """
    names = [layer.name for layer in plan.enabled_layers() if layers is None or layer.name in layers]
    modules = dict(model.named_modules())
    observers, handles, reached = {}, [], {"layer": None}
    for name in names:
        device = torch.device(tmp_device) if tmp_device is not None else modules[name].weight.device
        observer = observers[name] = make_observer(plan.layers[name], device)
        handles.append(modules[name].register_forward_pre_hook(_record(observer, reached)))
    if stop_after is not None:
        handles.append(stop_after.register_forward_hook(_stop))
    try:
        batches = distributed.all_ranks(lambda: _run_batches(model, calib_data_loader, verbose, reached, observers),
                                        "calibration")
    finally:
        for handle in handles:
            handle.remove()
    batches = distributed.sum_over_ranks(batches)
    distributed.reduce_observers(observers)
    if batches == 0:
        raise CalibrationError("the calibration loader yielded no batch")
    check_all_called(names, [name for name, o in observers.items() if o.rows_seen])
    _warn_degenerate(observers)
    logger.info("calibrated %d layers on %d batches", len(observers), batches)
    return observers


def _run_batches(model: nn.Module, calib_data_loader: Iterable, verbose: bool, reached: dict,
                 observers: dict[str, InputObserver]) -> int:
    """Run every batch of this rank (without gradients); returns how many ran."""
    batches, first_shapes = 0, None
    with torch.no_grad():
        for index, batch in tqdm(distributed.rank_batches(calib_data_loader), desc="calibrating", unit="batch",
                                 disable=not verbose):
            for observer in observers.values():
                observer.start_batch(index)
            reached["layer"] = None
            try:
                run_batch(model, batch)
            except _StopForward:
                pass
            except CalibrationError as exc:
                raise CalibrationError(f"calibration batch {index}: {exc}") from exc
            except SegQuantError:
                raise
            except Exception as exc:
                raise CalibrationError(_failure_message(model, index, batch, first_shapes, reached["layer"], exc)
                                       ) from exc
            first_shapes = first_shapes or batch_shapes(batch)
            batches += 1
    return batches


def batch_shapes(batch: Any) -> Any:
    """The shapes inside a batch (nested like the batch; non-tensors by type name), for messages."""
    if isinstance(batch, torch.Tensor):
        return tuple(batch.shape)
    if isinstance(batch, Mapping):
        return {k: batch_shapes(v) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return [batch_shapes(v) for v in batch]
    return type(batch).__name__


def _failure_message(model: nn.Module, index: int, batch: Any, first_shapes: Any, layer: str | None,
                     exc: Exception) -> str:
    where = (f"after the quantized layer {layer!r} ran" if layer else "before any quantized layer ran")
    expected = f"; batch 0 had shapes {first_shapes}" if first_shapes is not None else ""
    return (f"calibration batch {index} (shapes {batch_shapes(batch)}) failed in {type(model).__name__} {where}: "
            f"{type(exc).__name__}: {exc}{expected}")


def check_all_called(names: list[str], called: Iterable[str]) -> None:
    """Raise :class:`CalibrationError` naming every layer of ``names`` that is not in ``called`` (the layers the
    forward passes reached), before anything is quantized: such a layer has no statistics to quantize with."""
    reached = set(called)
    missing = [name for name in names if name not in reached]
    if missing:
        shown = ", ".join(repr(name) for name in missing[:6]) + (f" and {len(missing) - 6} more"
                                                                 if len(missing) > 6 else "")
        raise CalibrationError(
            f"{len(missing)} enabled layer(s) never ran on the calibration data, so they have no statistics: "
            f"{shown}. A layer the forward does not call (e.g. the separate q/k/v projections diffusers keeps "
            f"after fuse_qkv_projections()) cannot be calibrated: disable it with a config rule such as "
            f"{{{missing[0]!r}: {{'enable': False}}}}, or calibrate with inputs that reach it. Nothing was quantized.")


def _warn_degenerate(observers: dict[str, InputObserver]) -> None:
    zero = [name for name, o in observers.items()
            if o.rows_seen and not (o.max.abs().amax() > 0 or o.min.abs().amax() > 0)]
    if zero:
        shown = ", ".join(zero[:5]) + (f" and {len(zero) - 5} more" if len(zero) > 5 else "")
        logger.warning("the calibration inputs of %d layer(s) are all zero, so their input scales carry no "
                       "information (the quantized model will be far off on real inputs): %s; check the "
                       "calibration data", len(zero), shown)


def _stop(*_args: Any) -> None:
    raise _StopForward


def _record(observer: InputObserver, reached: dict):
    def hook(_module: nn.Module, args: tuple) -> None:
        observer.update(args[0])
        reached["layer"] = observer.name

    return hook
