"""Regional compilation finds the repeated blocks of stock diffusers models and keeps outputs unchanged."""

import pytest
import torch
from torch import nn

from segquant.models.tiny import build_tiny_denoiser, tiny_example_inputs
from segquant.pipeline.regional_compile import compile_repeated_blocks, repeated_block_lists


@pytest.mark.parametrize("name, expected", [
    ("sd3", ["transformer_blocks"]),
    ("flux", ["transformer_blocks", "single_transformer_blocks"]),
])
def test_repeated_block_lists_of_transformers(name, expected):
    assert repeated_block_lists(build_tiny_denoiser(name)) == expected


def test_nested_lists_are_not_listed_twice():
    inner = nn.ModuleList([nn.Linear(2, 2), nn.Linear(2, 2)])
    model = nn.Module()
    model.blocks = nn.ModuleList([nn.Sequential(nn.Linear(2, 2)), nn.Sequential(nn.Linear(2, 2))])
    model.blocks[0].append(inner)
    model.mixed = nn.ModuleList([nn.Linear(2, 2), nn.ReLU()])
    assert repeated_block_lists(model) == ["blocks"]


def test_model_without_repeated_blocks_raises():
    with pytest.raises(ValueError, match="no list of repeated blocks"):
        compile_repeated_blocks(nn.Sequential(nn.Linear(2, 2)))


def test_compiled_blocks_give_the_eager_output():
    model = build_tiny_denoiser("sd3")
    example = tiny_example_inputs("sd3")
    with torch.no_grad():
        eager = model(**example)[0]
        compile_repeated_blocks(model, backend="eager")
        compiled = model(**example)[0]
    assert all(block._compiled_call_impl is not None for block in model.transformer_blocks)
    torch.testing.assert_close(compiled, eager)
