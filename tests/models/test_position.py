"""crop_position_tables: SD3's position table cropped to the image sizes kept, with the same outputs."""

import pytest
import torch

pytest.importorskip("diffusers")

from diffusers import SD3Transformer2DModel  # noqa: E402

from segquant import crop_position_tables  # noqa: E402

CONFIG = dict(sample_size=8, patch_size=2, in_channels=4, num_layers=1, attention_head_dim=8, num_attention_heads=2,
              joint_attention_dim=16, caption_projection_dim=16, pooled_projection_dim=8, out_channels=4,
              pos_embed_max_size=20)


def output(model, latent_size: int):
    g = torch.Generator().manual_seed(latent_size)
    with torch.no_grad():
        return model(hidden_states=torch.randn(1, 4, latent_size, latent_size, generator=g),
                     encoder_hidden_states=torch.randn(1, 3, 16, generator=g),
                     pooled_projections=torch.randn(1, 8, generator=g), timestep=torch.tensor([500.0]))[0]


def test_cropped_table_gives_the_same_outputs_up_to_its_size_and_refuses_beyond():
    torch.manual_seed(0)
    model = SD3Transformer2DModel(**CONFIG).eval()
    # latent sizes 4..22 are 2..11 patches: odd and even counts up to the 11 asked for
    sizes = [4, 6, 10, 14, 18, 22]
    before = {size: output(model, size) for size in sizes}
    freed = crop_position_tables(model, max_image_size=170)  # 170 / (8 · 2) = 10.6 -> 11, to 12 for the parity of 20
    assert model.pos_embed.pos_embed_max_size == 12 and model.pos_embed.pos_embed.shape == (1, 144, 16)
    assert freed == (400 - 144) * 16 * 4
    for size in sizes:
        assert torch.equal(output(model, size), before[size])
    with pytest.raises(ValueError, match="cannot be greater than `pos_embed_max_size`: 12"):
        output(model, 26)  # 13 patches


def test_nothing_to_crop_frees_nothing_and_bad_sizes_are_named():
    model = SD3Transformer2DModel(**CONFIG).eval()
    assert crop_position_tables(model, max_image_size=(100, 400)) == 0  # 400 / 16 = 25 > 20: the whole table
    assert model.pos_embed.pos_embed_max_size == 20
    assert crop_position_tables(torch.nn.Linear(2, 2), 1024) == 0
    with pytest.raises(ValueError, match="must be positive"):
        crop_position_tables(model, max_image_size=0)
