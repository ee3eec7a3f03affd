"""Fashion-MNIST loading (IDX files, fallbacks, errors) and caption construction of the demo."""

import gzip
import struct

import numpy as np
import pytest
import torch

from segquant.demo import data


def _write_idx(path, array, compress=False):
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(">" + "I" * array.ndim, *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


@pytest.fixture
def idx_folder(tmp_path):
    rng = np.random.default_rng(0)
    for split, n, gz in (("train", 6, True), ("t10k", 4, False)):
        _write_idx(tmp_path / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)), gz)
        _write_idx(tmp_path / f"{split}-labels-idx1-ubyte", np.arange(n) % 10, gz)
    return tmp_path


def test_load_user_folder_gz_and_plain(idx_folder):
    x, y = data.load_fashion_mnist("train", idx_folder)
    assert x.shape == (6, 28, 28) and x.dtype == np.uint8
    assert y.tolist() == [0, 1, 2, 3, 4, 5]
    x, y = data.load_fashion_mnist("test", idx_folder)
    assert x.shape == (4, 28, 28) and y.dtype == np.int64


def test_env_var_fallback(idx_folder, monkeypatch):
    monkeypatch.setenv(data.ENV_VAR, str(idx_folder))
    monkeypatch.setattr(data, "DEBIAN_DIR", idx_folder / "nowhere")
    assert data.find_data_dir() == idx_folder


def test_missing_folder_error_names_places(tmp_path, monkeypatch):
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    monkeypatch.setattr(data, "DEBIAN_DIR", tmp_path / "debian")
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist") as err:
        data.find_data_dir(tmp_path / "mine")
    assert str(tmp_path / "mine") in str(err.value)


def test_bad_idx_magic_and_truncation(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x00\x00\x0d\x01\x00\x00\x00\x01\x05")
    with pytest.raises(ValueError, match="not an unsigned-byte IDX"):
        data.read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">I", 5) + b"\x01\x02")
    with pytest.raises(ValueError, match="expected 5 values"):
        data.read_idx(tmp_path / "short")


def test_bad_split_name(idx_folder):
    with pytest.raises(ValueError, match="split"):
        data.load_fashion_mnist("validation", idx_folder)


def test_to_model_range_pads_to_32_with_background():
    img = np.full((2, 28, 28), 255, np.uint8)
    x = data.to_model_range(img)
    assert x.shape == (2, 1, 32, 32) and x.dtype == torch.float32
    assert x[:, :, 2:30, 2:30].eq(1).all() and x[:, :, :2].eq(-1).all() and x[:, :, :, 30:].eq(-1).all()


def test_captions_cover_classes_with_varied_templates():
    captions, labels = data.all_captions()
    assert len(captions) == len(set(captions)) == 400
    assert np.bincount(labels).tolist() == [40] * 10
    assert "a photo of an ankle boot" in captions and "a photo of a ankle boot" not in captions
    assert data.class_prompt(7) == "a photo of a sneaker"
    prompts, plabels = data.eval_prompts(per_class=3, seed=1)
    assert len(prompts) == 30 and plabels[:10] == list(range(10))
    cap_label = dict(zip(captions, labels))
    assert all(cap_label[p] == y for p, y in zip(prompts, plabels))


@pytest.mark.skipif(not (data.DEBIAN_DIR / "t10k-images-idx3-ubyte.gz").is_file(),
                    reason="Debian package dataset-fashion-mnist not installed")
def test_debian_package_test_split():
    x, y = data.load_fashion_mnist("test")
    assert x.shape == (10000, 28, 28) and np.bincount(y).tolist() == [1000] * 10
