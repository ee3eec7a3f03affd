"""Data parallelism over ``torch.distributed`` processes launched by ``torchrun`` (one host or many).

    torchrun --nproc-per-node 4 -m segquant calibrate ...        # or: segquant eval ..., or your script

Every rank makes the same calls with the same arguments; the work is split by rank and the results
are combined so that every rank ends with what a single process would have computed:

* :func:`shard_range`: a contiguous, balanced share of ``n`` items (prompts, image batches); sizes
  differ by at most one, so a world size that does not divide the work is fine (a rank may get none).
* :func:`rank_batches`: this rank's calibration batches, a contiguous share of a loader with a length
  (round-robin for an iterator); a map-style ``DataLoader`` loads only this rank's batches.
* :func:`gather_list` / :func:`gather_to_main`: every rank's list, concatenated in rank order, on
  every rank / on rank 0.
* :func:`reduce_observers`: calibration statistics combined across ranks (min / max exactly, row and
  sample counts summed, GPTQ Hessians as the sample-weighted mean, reservoir samples by their keys).
* :func:`all_ranks` / :func:`on_main`: run a step on every rank (or on rank 0) and make a failure on
  one rank an error on all of them, so no rank waits forever for a peer that gave up.

:func:`launch` starts the default process group from torchrun's environment (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``): NCCL for CUDA devices, gloo otherwise. Without
torchrun it does nothing and the world is one process. The library's data-parallel paths follow the
*initialized default group*: :func:`current` is a single process unless a group with more than one
rank is initialized.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Iterable, Iterator, Mapping, TypeVar

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, IterableDataset

from segquant.errors import DistributedError, RankDeviceError, RendezvousError

logger = logging.getLogger(__name__)

RENDEZVOUS_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """Where this process stands: ``rank`` of ``size`` processes, ``local_rank`` on its host."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """True on rank 0 (the rank that writes indexes, computes metrics and prints)."""
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        """True when the work is split over more than one process."""
        return self.size > 1

    def owns_batch(self, index: int) -> bool:
        """Whether batch ``index`` is this rank's (round-robin: ``index % size == rank``)."""
        return index % self.size == self.rank


def current() -> World:
    """The initialized default process group as a :class:`World`; one process when there is none."""
    if not dist.is_available() or not dist.is_initialized():
        return World()
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def torchrun_env(environ: Mapping[str, str] | None = None) -> World | None:
    """The :class:`World` torchrun describes in ``environ`` (default ``os.environ``); ``None`` when neither
    ``RANK`` nor ``WORLD_SIZE`` is set (not launched by torchrun).

    Raises :class:`RendezvousError` naming the missing or malformed variables when only part of the
    rendezvous environment is there, or when ``RANK`` is not below ``WORLD_SIZE``.
    """
    env = os.environ if environ is None else environ
    if "RANK" not in env and "WORLD_SIZE" not in env:
        return None
    missing = [name for name in RENDEZVOUS_VARS if not env.get(name)]
    if missing:
        raise RendezvousError(f"incomplete torchrun rendezvous environment: {', '.join(missing)} not set "
                              f"(RANK={env.get('RANK')!r}, WORLD_SIZE={env.get('WORLD_SIZE')!r}); launch with "
                              "`torchrun --nproc-per-node N ...`, or unset RANK and WORLD_SIZE for one process")
    try:
        world = World(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env["LOCAL_RANK"]))
    except ValueError as exc:
        raise RendezvousError(f"torchrun rendezvous variables must be integers: {exc}") from exc
    if not 0 <= world.rank < world.size:
        raise RendezvousError(f"RANK={world.rank} is not in [0, WORLD_SIZE={world.size})")
    return world


def rank_device(device: str | torch.device, world: World) -> torch.device:
    """The device of this rank: ``"cuda"`` (no index) becomes ``cuda:<local_rank>``; others stay as given.

    Raises :class:`RankDeviceError` naming the rank when that device does not exist on this host.
    """
    dev = torch.device(device)
    if dev.type != "cuda":
        return dev
    index = world.local_rank if dev.index is None else dev.index
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if index >= count:
        raise RankDeviceError(f"rank {world.rank} (local rank {world.local_rank}) needs cuda:{index}, but this host "
                              f"has {count} CUDA device(s); start at most {count} processes per node "
                              "(torchrun --nproc-per-node)")
    return torch.device("cuda", index)


@contextlib.contextmanager
def launch(device: str | torch.device = "cpu", timeout_s: float = 6 * 3600.0) -> Iterator[tuple[World, torch.device]]:
    """Start the default process group when launched by torchrun; yield ``(world, this rank's device)``.

    NCCL for CUDA devices, gloo otherwise; the group is destroyed on exit. Without torchrun's
    environment, or with a group already initialized by the caller, nothing is started or destroyed.
    ``timeout_s`` bounds how long a collective waits: long, because a rank that finished its share
    waits there for the others (after a resume, one rank may have hours of prompts left). A rank that
    dies ends the others sooner: torchrun stops the whole group. ``torch._dynamo`` is imported before the
    group starts, so that the group and its threads are really gone on exit (see
    :func:`_import_dynamo_before_the_group`).
    """
    env = torchrun_env()
    if env is None or dist.is_initialized():
        world = current()
        yield world, rank_device(device, world)
        return
    dev = rank_device(device, env)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    _import_dynamo_before_the_group()
    try:
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    except (RuntimeError, ValueError) as exc:
        raise RendezvousError(f"rank {env.rank}: the {backend} rendezvous at {os.environ['MASTER_ADDR']}:"
                              f"{os.environ['MASTER_PORT']} failed: {exc}") from exc
    logger.info("rank %d of %d on %s (%s)", env.rank, env.size, dev, backend)
    try:
        yield current(), dev
        dist.barrier()  # on a normal exit no rank tears the group down while another still uses it
    finally:
        dist.destroy_process_group()


def _import_dynamo_before_the_group() -> None:
    """Import ``torch._dynamo`` while no process group exists.

    Imported while the default group exists (diffusers imports it), torch 2.13's ``torch._dynamo`` keeps
    references to the group, so ``destroy_process_group`` no longer destroys it and gloo's worker threads
    outlive it. A worker that drops the last collective's tensors after the interpreter began to shut down
    needs the GIL it can no longer take, and the process aborts ("terminate called without an active
    exception") although its work is done. Imported first, the group is destroyed and its threads joined
    when :func:`launch` exits (tests/distributed/test_launch_exit.py).
    """
    import torch._dynamo  # noqa: F401 - its first import must not happen while a group exists


def shard_range(n: int, world: World | None = None) -> range:
    """This rank's contiguous share of ``range(n)``: the first ``n % size`` ranks get one item more."""
    world = world or current()
    base, extra = divmod(n, world.size)
    start = world.rank * base + min(world.rank, extra)
    return range(start, start + base + (world.rank < extra))


def rank_batches(loader: Iterable[Any], world: World | None = None) -> Iterator[tuple[int, Any]]:
    """``(index, batch)`` of this rank's batches of ``loader``, ``index`` counting every rank's batches.

    A loader with a length is split into contiguous shares (:func:`shard_range`), one without (an
    iterator) round-robin (:meth:`World.owns_batch`). A map-style ``DataLoader`` without worker processes
    loads only this rank's batches; other loaders are iterated in full and the other batches skipped.
    """
    world = world or current()
    if not world.parallel:
        yield from enumerate(loader)
        return
    share = shard_range(len(loader), world) if hasattr(loader, "__len__") else None
    owns = world.owns_batch if share is None else share.__contains__
    if _loads_by_index(loader):
        for index, indices in enumerate(loader.batch_sampler):
            if owns(index):
                yield index, loader.collate_fn([loader.dataset[i] for i in indices])
        return
    for index, batch in enumerate(loader):
        if owns(index):
            yield index, batch


def _loads_by_index(loader: Any) -> bool:
    """True for a ``DataLoader`` whose batches can be built from its batch sampler's indices here."""
    return (isinstance(loader, DataLoader) and loader.num_workers == 0 and loader.batch_sampler is not None
            and not isinstance(loader.dataset, IterableDataset))


def _comm_device() -> torch.device:
    """Where tensors must be for collectives of the default group (NCCL: this rank's GPU)."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def gather_list(items: list[T]) -> list[T]:
    """Every rank's ``items`` (picklable; tensors best on CPU) concatenated in rank order, on every rank."""
    world = current()
    if not world.parallel:
        return list(items)
    parts: list[Any] = [None] * world.size
    dist.all_gather_object(parts, list(items))
    return [item for part in parts for item in part]


def gather_to_main(items: list[T]) -> list[T] | None:
    """Every rank's ``items`` concatenated in rank order on rank 0; ``None`` on the other ranks."""
    world = current()
    if not world.parallel:
        return list(items)
    parts: list[Any] | None = [None] * world.size if world.is_main else None
    dist.gather_object(list(items), parts, dst=0)
    return None if parts is None else [item for part in parts for item in part]


def all_ranks(step: Callable[[], T], what: str) -> T:
    """Run ``step()`` on every rank; if it raises on any rank, raise on every rank.

    The failing rank re-raises its own exception; the others raise :class:`DistributedError` naming
    the failed ranks and their errors (``what`` says which step), instead of waiting for them.
    """
    world = current()
    error: BaseException | None = None
    try:
        result = step()
    except Exception as exc:  # noqa: BLE001 - reported to every rank, then re-raised below
        if not world.parallel:
            raise
        error = exc
    if not world.parallel:
        return result
    mine = None if error is None else f"rank {world.rank}: {type(error).__name__}: {error}"
    failures = [f for f in gather_list([mine]) if f is not None]
    if error is not None:
        raise error
    if failures:
        raise DistributedError(f"{what} failed on {len(failures)} of {world.size} ranks: {'; '.join(failures)}")
    return result


def on_main(step: Callable[[], T], what: str) -> T:
    """Run ``step()`` on rank 0 only and return its result on every rank (it must be picklable); an
    exception on rank 0 is raised on every rank."""
    world = current()
    if not world.parallel:
        return step()
    box: list[Any] = [None]
    error: Exception | None = None
    if world.is_main:
        try:
            box[0] = ("ok", step())
        except Exception as exc:  # noqa: BLE001 - reported to every rank, then re-raised
            error, box[0] = exc, ("error", f"{type(exc).__name__}: {exc}")
    dist.broadcast_object_list(box, src=0)
    status, value = box[0]
    if error is not None:
        raise error
    if status == "error":
        raise DistributedError(f"{what} failed on rank 0: {value}")
    return value


def barrier() -> None:
    """Wait for every rank (no-op for one process)."""
    if current().parallel:
        dist.barrier()


def sum_over_ranks(value: int) -> int:
    """The sum of an integer over all ranks, on every rank."""
    if not current().parallel:
        return value
    total = torch.tensor([value], dtype=torch.int64, device=_comm_device())
    dist.all_reduce(total)
    return int(total.item())


def _all_reduce_(tensor: torch.Tensor, op: Any) -> None:
    """All-reduce ``tensor`` in place, through the collective device when it lives elsewhere."""
    comm = _comm_device()
    moved = tensor.to(comm)
    dist.all_reduce(moved, op=op)
    if moved is not tensor:
        tensor.copy_(moved)


def reduce_observers(observers: Mapping[str, Any]) -> None:
    """Combine each rank's :class:`~segquant.observers.InputObserver` statistics in place, so every rank
    holds the statistics of all ranks' batches (no-op for one process).

    Exact (bitwise equal to one process): per-channel ``min`` / ``max``, ``rows_seen``, and the reservoir
    sample (keys depend only on a row's batch and position, see ``InputObserver.start_batch``). Within
    float32 rounding: the GPTQ Hessian, a sample-weighted mean whose summation order differs.
    Every rank must hold observers of the same names (the same plan).
    """
    if not current().parallel:
        return
    for name in sorted(observers):
        obs = observers[name]
        _all_reduce_(obs.min, dist.ReduceOp.MIN)
        _all_reduce_(obs.max, dist.ReduceOp.MAX)
        obs.rows_seen = sum_over_ranks(obs.rows_seen)
        total = sum_over_ranks(obs.hessian.n_samples) if obs.hessian is not None else 0
        if total:
            share = obs.hessian.share(total)
            _all_reduce_(share, dist.ReduceOp.SUM)
            obs.hessian.load_mean(share, total)
        if obs.max_sample_rows:
            obs.merge_reservoirs(gather_list([obs.reservoir_cpu()]))
