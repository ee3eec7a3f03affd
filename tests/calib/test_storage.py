"""Shard storage, CalibrationSet streaming/batching, corrupt-shard errors. No pipelines needed."""

import json

import pytest
import torch

from segquant.calib import dataset as dataset_module
from segquant.calib.dataset import CalibrationSet, load_calibrate_set
from segquant.calib.records import RecordInfo, collate_records, decode_tree, encode_tree
from segquant.calib.storage import ShardWriter, prepare_dump, read_manifest
from segquant.errors import CalibrationError, ConfigError, CorruptShardError

SETTINGS = {"sampler": {"type": "uniform"}, "seed": 0}


def make_record(i: int) -> dict:
    g = torch.Generator().manual_seed(i)
    return {
        "hidden_states": torch.randn(2, 4, 3, 3, generator=g),
        "timestep": torch.tensor(float(900 - i)),
        "encoder_hidden_states": torch.randn(2, 5, 8, generator=g).to(torch.bfloat16),
        "added_cond_kwargs": {"ids": torch.arange(6).reshape(2, 3) + i, "mask": torch.rand(2, 3, generator=g) > 0.5},
        "block_controlnet_hidden_states": [torch.randn(2, 7, generator=g).half(), torch.randn(2, 7, generator=g)],
        "txt_ids": torch.zeros(5, 3),
        "joint_attention_kwargs": None,
        "return_dict": False,
    }


def make_info(i: int) -> RecordInfo:
    return RecordInfo(prompt_id=i // 2, step_index=i % 2 * 5, timestep=900.0 - i, branches=("uncond", "cond"))


def assert_same_tree(a, b):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same_tree(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b):
            assert_same_tree(x, y)
    else:
        assert a == b and type(a) is type(b)


def write_set(root, n, chunk_size, compress):
    prepare_dump(root, SETTINGS)
    writer = ShardWriter(root, chunk_size, compress, SETTINGS)
    for i in range(n):
        writer.add(make_record(i), make_info(i))
    writer.close()
    return load_calibrate_set(root)


def test_encode_decode_round_trip_keeps_structure():
    tensors = {}
    record = make_record(3) | {"scale": 0.5, "name": "x", "pair": (1, torch.ones(1))}
    skeleton = encode_tree(record, tensors)
    json.dumps(skeleton)  # the skeleton is plain JSON
    assert_same_tree(decode_tree(json.loads(json.dumps(skeleton)), tensors), record)


def test_unstorable_value_names_its_path():
    with pytest.raises(CalibrationError, match=r"added_cond_kwargs\.fn"):
        encode_tree({"added_cond_kwargs": {"fn": object()}}, {})


@pytest.mark.parametrize("compress", [True, False])
def test_shards_round_trip_bit_exact(tmp_path, compress):
    loaded = write_set(tmp_path / "set", n=7, chunk_size=3, compress=compress)
    manifest = read_manifest(tmp_path / "set")
    assert manifest["status"] == "complete" and manifest["num_records"] == 7
    assert [s["records"] for s in manifest["shards"]] == [3, 3, 1]
    suffix = ".safetensors.zst" if compress else ".safetensors"
    assert all(s["file"].endswith(suffix) for s in manifest["shards"])
    assert manifest["schema"]["encoder_hidden_states"] == {"shape": [2, 5, 8], "dtype": "bfloat16"}
    assert manifest["versions"]["torch"] == torch.__version__
    assert len(loaded) == 7
    for i in range(7):
        assert_same_tree(loaded[i], make_record(i))
        assert loaded.info(i) == make_info(i)


def test_reader_keeps_one_shard_and_reads_each_once(tmp_path, monkeypatch):
    loaded = write_set(tmp_path / "set", n=10, chunk_size=4, compress=True)
    reads = []
    original = dataset_module.read_shard
    monkeypatch.setattr(dataset_module, "read_shard", lambda root, entry, verify: reads.append(entry["file"]) or original(root, entry, verify))
    for batch in loaded.get_dataloader(batch_size=3, shuffle=True, seed=5):
        assert batch["hidden_states"].shape[0] in (2, 4, 6)
    assert sorted(reads) == sorted({*reads}) and len(reads) == 3  # each shard decoded exactly once
    assert loaded._source._cached is not None and len(loaded._source._cached[1]) <= 4


def test_block_shuffle_covers_every_record_once_and_changes_per_epoch(tmp_path):
    loaded = write_set(tmp_path / "set", n=10, chunk_size=4, compress=False)
    sampler = dataset_module.BlockShuffleSampler(loaded._source.blocks, seed=1)
    first, second = list(sampler), list(sampler)
    assert sorted(first) == list(range(10)) and sorted(second) == list(range(10))
    assert first != second
    shards = [i // 4 for i in first]  # records of one shard come together
    assert sum(a != b for a, b in zip(shards, shards[1:])) == 2


def corrupt_cases():
    def flip(path):
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))

    return {
        "flipped": (flip, "SHA-256"),
        "truncated": (lambda p: p.write_bytes(p.read_bytes()[:-10]), "truncated"),
        "missing": (lambda p: p.unlink(), "missing"),
    }


@pytest.mark.parametrize("case", ["flipped", "truncated", "missing"])
def test_corrupt_shard_error_names_the_file(tmp_path, case):
    write_set(tmp_path / "set", n=5, chunk_size=2, compress=True)
    damage, words = corrupt_cases()[case]
    shard = tmp_path / "set" / "shard-00001.safetensors.zst"
    damage(shard)
    loaded = load_calibrate_set(tmp_path / "set")
    assert torch.equal(loaded[0]["hidden_states"], make_record(0)["hidden_states"])  # other shards still fine
    with pytest.raises(CorruptShardError, match=rf"shard-00001\.safetensors\.zst.*{words}"):
        loaded[2]


def test_undecodable_shard_without_checksum(tmp_path):
    write_set(tmp_path / "set", n=2, chunk_size=2, compress=False)
    shard = tmp_path / "set" / "shard-00000.safetensors"
    data = bytearray(shard.read_bytes())
    data[0:8] = (10**9).to_bytes(8, "little")  # header length beyond the file
    shard.write_bytes(bytes(data))
    with pytest.raises(CorruptShardError, match="shard-00000.safetensors"):
        load_calibrate_set(tmp_path / "set", verify=False)[0]


def test_missing_manifest_and_foreign_folder(tmp_path):
    with pytest.raises(CorruptShardError, match="manifest.json"):
        load_calibrate_set(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty"):
        prepare_dump(tmp_path, SETTINGS)


def test_settings_mismatch_names_the_key(tmp_path):
    write_set(tmp_path / "set", n=2, chunk_size=2, compress=False)
    with pytest.raises(ConfigError, match=r"seed: 0 \(stored\) != 1 \(now\)"):
        prepare_dump(tmp_path / "set", {**SETTINGS, "seed": 1})
    assert prepare_dump(tmp_path / "set", SETTINGS)["status"] == "complete"
    assert prepare_dump(tmp_path / "set", {**SETTINGS, "seed": 1}, overwrite=True) is None
    assert not list((tmp_path / "set").iterdir())


def test_incomplete_set_is_refused_unless_allowed(tmp_path):
    prepare_dump(tmp_path, SETTINGS)
    writer = ShardWriter(tmp_path, 2, False, SETTINGS)
    for i in range(3):
        writer.add(make_record(i), make_info(i))  # one shard written, one record still buffered
    with pytest.raises(CalibrationError, match="incomplete"):
        load_calibrate_set(tmp_path)
    partial = load_calibrate_set(tmp_path, allow_incomplete=True)
    assert len(partial) == 2


def test_in_memory_set_save_round_trip(tmp_path):
    records = [make_record(i) for i in range(3)]
    mem = CalibrationSet.from_records(records, [make_info(i) for i in range(3)], SETTINGS)
    on_disk = mem.save(tmp_path / "saved", chunk_size=2)
    assert type(on_disk) is type(mem) and len(on_disk) == 3
    for i in range(3):
        assert_same_tree(on_disk[i], mem[i])
        assert on_disk.info(i) == mem.info(i)
    with pytest.raises(IndexError):
        mem[3]


def test_collate_records():
    a, b = make_record(0), make_record(1)
    batch = collate_records([a, b])
    assert batch["hidden_states"].shape == (4, 4, 3, 3)
    assert torch.equal(batch["hidden_states"][2:], b["hidden_states"])
    assert torch.equal(batch["timestep"], torch.tensor([900.0, 900.0, 899.0, 899.0]))  # 0-d -> one per row
    assert batch["txt_ids"].shape == (5, 3)  # no batch dimension: kept once
    assert batch["added_cond_kwargs"]["ids"].shape == (4, 3)
    assert [t.shape for t in batch["block_controlnet_hidden_states"]] == [(4, 7), (4, 7)]
    assert batch["block_controlnet_hidden_states"][0].dtype == torch.float16
    assert batch["return_dict"] is False and batch["joint_attention_kwargs"] is None
    assert collate_records([a]) is a


def test_collate_records_errors_name_the_entry():
    a, b = make_record(0), make_record(1)
    with pytest.raises(CalibrationError, match="return_dict"):
        collate_records([a, {**b, "return_dict": True}])
    with pytest.raises(CalibrationError, match="txt_ids"):
        collate_records([a, {**b, "txt_ids": torch.ones(5, 3)}])
    with pytest.raises(CalibrationError, match="different keys"):
        collate_records([a, {k: v for k, v in b.items() if k != "txt_ids"}])
