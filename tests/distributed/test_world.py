"""segquant.distributed without a process group: torchrun's environment, rank devices, sharding, and the
observer merges that make several ranks' statistics equal one process's."""

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from segquant import distributed
from segquant.distributed import World, launch, rank_batches, rank_device, shard_range, torchrun_env
from segquant.errors import RankDeviceError, RendezvousError
from segquant.observers import InputObserver
from same import equal_trees

FULL_ENV = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}


def test_no_torchrun_environment_is_one_process():
    assert torchrun_env({}) is None
    assert torchrun_env(FULL_ENV) == World(rank=1, size=2, local_rank=1)


@pytest.mark.parametrize("missing", ["MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK"])
def test_incomplete_rendezvous_environment_names_the_missing_variable(missing):
    env = {k: v for k, v in FULL_ENV.items() if k != missing}
    with pytest.raises(RendezvousError, match=missing):
        torchrun_env(env)


def test_bad_rank_is_a_rendezvous_error():
    with pytest.raises(RendezvousError, match="RANK=2 is not in"):
        torchrun_env({**FULL_ENV, "RANK": "2"})
    with pytest.raises(RendezvousError, match="integers"):
        torchrun_env({**FULL_ENV, "WORLD_SIZE": "two"})


def test_launch_with_partial_environment_fails_before_any_work(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(RendezvousError, match="RANK"):
        with launch("cpu"):
            pass


def test_rank_on_a_missing_gpu_is_named():
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(RankDeviceError, match=f"rank 3 .*cuda:{count}.*{count} CUDA device"):
        rank_device("cuda", World(rank=3, size=8, local_rank=count))
    assert rank_device("cpu", World(rank=3, size=8, local_rank=3)) == torch.device("cpu")


def test_launch_without_torchrun_is_one_process(monkeypatch):
    for name in distributed.RENDEZVOUS_VARS:
        monkeypatch.delenv(name, raising=False)
    with launch("cpu") as (world, device):
        assert world == World() and device == torch.device("cpu") and not world.parallel


@pytest.mark.parametrize("n,size", [(10, 3), (5, 2), (2, 4), (0, 2), (7, 1)])
def test_shards_are_contiguous_balanced_and_cover_everything(n, size):
    shards = [shard_range(n, World(rank, size)) for rank in range(size)]
    assert [i for s in shards for i in s] == list(range(n))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_rank_batches_split_lists_dataloaders_and_iterators():
    data = torch.arange(20.0).reshape(10, 2)
    loaders = {"list": lambda: [data[i: i + 3] for i in range(0, 10, 3)],
               "dataloader": lambda: DataLoader(TensorDataset(data), batch_size=3),
               "iterator": lambda: iter([data[i: i + 3] for i in range(0, 10, 3)])}
    for kind, make in loaders.items():
        expected = list(enumerate(make()))
        got = sorted((pair for r in range(3) for pair in rank_batches(make(), World(r, 3))), key=lambda p: p[0])
        assert [i for i, _ in got] == list(range(4)), kind
        assert all(equal_trees(a, b) for (_, a), (_, b) in zip(expected, got)), kind
    shares = [[i for i, _ in rank_batches(loaders["list"](), World(r, 3))] for r in range(3)]
    assert shares == [[0, 1], [2], [3]]  # a loader with a length: contiguous shares
    rr = [[i for i, _ in rank_batches(loaders["iterator"](), World(r, 3))] for r in range(3)]
    assert rr == [[0, 3], [1], [2]]  # an iterator: round-robin


def test_dataloader_share_loads_only_its_batches():
    class Counting(Dataset):
        def __init__(self):
            self.read = []

        def __len__(self):
            return 8

        def __getitem__(self, i):
            self.read.append(i)
            return torch.tensor([float(i)])

    dataset = Counting()
    batches = list(rank_batches(DataLoader(dataset, batch_size=2), World(1, 2)))
    assert [i for i, _ in batches] == [2, 3] and sorted(dataset.read) == [4, 5, 6, 7]


def _observe(batches, indices, hessian=False):
    obs = InputObserver("layer", 6, hessian=hessian, max_sample_rows=7)
    for i in indices:
        obs.start_batch(i)
        obs.update(batches[i])
    return obs


def test_reservoir_of_rank_shares_merges_to_the_single_process_sample():
    batches = [torch.randn(int(n), 6) for n in torch.randint(1, 6, (9,))]
    single = _observe(batches, range(9))
    ranks = [_observe(batches, [i for i in range(9) if World(r, 2).owns_batch(i)]) for r in range(2)]
    ranks[0].merge_reservoirs([r.reservoir_cpu() for r in ranks])
    assert single.sample.shape == (7, 6)
    assert torch.equal(ranks[0].sample, single.sample)


def test_hessian_shares_sum_to_the_single_process_mean():
    batches = [torch.randn(5, 6) for _ in range(4)]
    single = _observe(batches, range(4), hessian=True).hessian
    parts = [_observe(batches, idx, hessian=True).hessian for idx in ([0, 2], [1, 3], [])]
    total = sum(p.n_samples for p in parts)
    parts[0].load_mean(sum(p.share(total) for p in parts), total)
    assert parts[0].n_samples == single.n_samples == 20
    torch.testing.assert_close(parts[0].hessian(), single.hessian(), rtol=1e-6, atol=1e-6)


def test_collectives_are_identities_for_one_process():
    assert distributed.gather_list([1, 2]) == [1, 2] and distributed.gather_to_main([3]) == [3]
    assert distributed.sum_over_ranks(4) == 4
    assert distributed.on_main(lambda: "x", "step") == "x" and distributed.all_ranks(lambda: 5, "step") == 5
    with pytest.raises(ValueError, match="boom"):
        distributed.all_ranks(lambda: (_ for _ in ()).throw(ValueError("boom")), "step")
