"""Fashion-MNIST for the demo models: IDX loading, 32×32 padding, and captions from class names.

The images come from the Debian package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``)
or from any folder holding the four standard IDX files (gzipped or not). Nothing is downloaded.
"""

from __future__ import annotations

import gzip
import logging
import os
import random
import struct
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
ENV_VAR = "SEGQUANT_FASHION_MNIST"

CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)

# Words a caption may use for each class (index = label).
CLASS_WORDS = (
    ("t-shirt", "top", "tee shirt", "short-sleeved t-shirt"),
    ("pair of trousers", "pair of pants", "pair of jeans", "trousers"),
    ("pullover", "sweater", "jumper", "knitted pullover"),
    ("dress", "summer dress", "long dress", "sleeveless dress"),
    ("coat", "winter coat", "jacket", "long coat"),
    ("sandal", "summer sandal", "open sandal", "flip-flop sandal"),
    ("shirt", "button-up shirt", "long-sleeved shirt", "collared shirt"),
    ("sneaker", "running shoe", "trainer", "sports shoe"),
    ("bag", "handbag", "purse", "shoulder bag"),
    ("ankle boot", "boot", "leather ankle boot", "short boot"),
)

TEMPLATES = (
    "a photo of a {}",
    "a {}",
    "{}",
    "a grayscale photo of a {}",
    "a picture of a {} on a black background",
    "a product photo of a {}",
    "a small image of a {}",
    "a {} for sale",
    "a simple {}",
    "fashion item: {}",
)

SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def all_captions() -> tuple[list[str], np.ndarray]:
    """Every unique caption and its class label.

    Returns ``(captions, labels)``: ``len(CLASS_WORDS[c]) × len(TEMPLATES)`` captions per class
    (400 in total), and an int64 array of shape ``(len(captions),)``.
    """
    captions, labels = [], []
    for label, words in enumerate(CLASS_WORDS):
        for word in words:
            for template in TEMPLATES:
                captions.append(_article(template.format(word)))
                labels.append(label)
    return captions, np.asarray(labels, dtype=np.int64)


def _article(text: str) -> str:
    """Fix "a" before a vowel ("a ankle boot" -> "an ankle boot")."""
    out = []
    words = text.split(" ")
    for i, w in enumerate(words):
        if w == "a" and i + 1 < len(words) and words[i + 1][:1].lower() in "aeiou":
            w = "an"
        out.append(w)
    return " ".join(out)


def class_prompt(label: int) -> str:
    """The canonical prompt for a class, e.g. ``"a photo of a sneaker"``."""
    return _article(TEMPLATES[0].format(CLASS_WORDS[label][0]))


def find_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """Locate the folder with the IDX files.

    Order: the ``data_dir`` argument, the ``SEGQUANT_FASHION_MNIST`` environment variable, the Debian
    package's folder. Raises ``FileNotFoundError`` naming every place that was tried.
    """
    candidates = [data_dir, os.environ.get(ENV_VAR), DEBIAN_DIR]
    tried = []
    for cand in candidates:
        if not cand:
            continue
        path = Path(cand)
        tried.append(str(path))
        if _idx_path(path, SPLIT_FILES["test"][0]) is not None:
            return path
    raise FileNotFoundError(
        "Fashion-MNIST IDX files not found (tried: " + ", ".join(tried) + "). Install the Debian package "
        f"'dataset-fashion-mnist', or pass a folder with {SPLIT_FILES['train'] + SPLIT_FILES['test']} "
        f"(optionally .gz) via --data-dir or ${ENV_VAR}."
    )


def _idx_path(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx")):
        if (folder / name).is_file():
            return folder / name
    return None


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (optionally gzipped) into a uint8 array of its stated shape."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (bad magic {data[:4]!r})")
    ndim = data[3]
    dims = struct.unpack(">" + "I" * ndim, data[4: 4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise ValueError(f"{path}: expected {int(np.prod(dims))} values for shape {dims}, found {arr.size}")
    return arr.reshape(dims)


def load_fashion_mnist(split: str = "train", data_dir=None) -> tuple[np.ndarray, np.ndarray]:
    """Load a split. Returns ``images`` uint8 ``(N, 28, 28)`` and ``labels`` int64 ``(N,)``."""
    if split not in SPLIT_FILES:
        raise ValueError(f"split: {split!r} is not one of {sorted(SPLIT_FILES)}")
    folder = find_data_dir(data_dir)
    img_stem, lbl_stem = SPLIT_FILES[split]
    img_path, lbl_path = _idx_path(folder, img_stem), _idx_path(folder, lbl_stem)
    if img_path is None or lbl_path is None:
        raise FileNotFoundError(f"{folder}: missing {img_stem} or {lbl_stem} (split {split!r})")
    images, labels = read_idx(img_path), read_idx(lbl_path).astype(np.int64)
    if images.ndim != 3 or images.shape[0] != labels.shape[0]:
        raise ValueError(f"{folder}: images {images.shape} and labels {labels.shape} do not match")
    return images, labels


def to_model_range(images: np.ndarray):
    """uint8 ``(N, 28, 28)`` -> float32 tensor ``(N, 1, 32, 32)`` in [-1, 1], zero-padded by 2 pixels
    (padding value -1 = the black background)."""
    import torch

    x = torch.from_numpy(np.array(images, dtype=np.uint8)).float().div_(127.5).sub_(1.0)
    x = torch.nn.functional.pad(x, (2, 2, 2, 2), value=-1.0)
    return x.unsqueeze(1)


def eval_prompts(per_class: int = 2, seed: int = 0) -> tuple[list[str], list[int]]:
    """Prompts for evaluation: ``per_class`` captions per class (the canonical one first, then random
    templates), interleaved class by class. Returns ``(prompts, labels)``."""
    captions, cap_labels = all_captions()
    rng = random.Random(seed)
    prompts, labels = [], []
    for k in range(per_class):
        for c in range(len(CLASS_NAMES)):
            if k == 0:
                prompts.append(class_prompt(c))
            else:
                prompts.append(rng.choice([p for p, y in zip(captions, cap_labels) if y == c]))
            labels.append(c)
    return prompts, labels


def load_npz_images(npz_path: str) -> dict:
    """Images of the npz as float ``(N, 1, 32, 32)`` in [-1, 1] (``train_x``, ``test_x``) + int64 labels."""
    import torch

    d = np.load(npz_path)
    return {"train_x": to_model_range(d["train_images"]), "train_y": torch.from_numpy(d["train_labels"]).long(),
            "test_x": to_model_range(d["test_images"]), "test_y": torch.from_numpy(d["test_labels"]).long()}
