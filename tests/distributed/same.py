"""Bitwise comparison of nested results (tensors, dicts, lists) for the multi-process tests."""

import torch


def equal_trees(a, b) -> bool:
    """True when ``a`` and ``b`` have the same structure and bitwise equal tensors of the same dtype."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(equal_trees(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(equal_trees(x, y) for x, y in zip(a, b))
    return a == b


def assert_same_sets(a, b) -> None:
    """Two calibration sets hold the same records with the same infos, in the same order."""
    assert len(a) == len(b)
    assert [a.info(i) for i in range(len(a))] == [b.info(i) for i in range(len(b))]
    for i in range(len(a)):
        assert equal_trees(a[i], b[i]), f"record {i} differs"
