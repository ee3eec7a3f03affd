"""Exact pattern tables for the tiny *stock* diffusers models (segquant.models.tiny).

The expected tables are written from reading diffusers 0.42's model code (cited per entry), not from
the detector's output. Tiny sizes (segquant/models/tiny.py): SD3/FLUX inner dim 16 = 2 heads x 8;
PixArt 24 = 3 heads x 8; UNet cross-attention block 32 channels = 4 heads x 8, GEGLU inner 128.
Every linear layer that is *not* listed must have no entry (full-dict comparison).
"""

import pytest

from segquant.enums import SegPattern as P
from segquant.graph import LayerSegments, find_layer_segments
from segquant.models.tiny import build_tiny_denoiser, tiny_example_inputs


def adaln(n: int, width: int) -> LayerSegments:
    """AdaLN modulation: ``self.linear(self.silu(emb)).chunk(n, dim=1)`` (normalization.py)."""
    return LayerSegments((width,) * n, (), "silu", (P.LINEAR2CHUNK, P.ACTIVATION2LINEAR))


def heads(h: int, d: int) -> LayerSegments:
    """Attention processors: ``(B, S, H, D) -> reshape/flatten -> (B, S, H*D) -> to_out[0]``."""
    return LayerSegments((), (d,) * h, None, (P.RESHAPE2LINEAR,))


def dual(act: str) -> LayerSegments:
    return LayerSegments((), (), act, (P.ACTIVATION2LINEAR,))


def cat(*widths: int) -> LayerSegments:
    return LayerSegments((), widths, None, (P.CONCAT2LINEAR,))


def timestep_embedder(prefix: str, channels: int = 256) -> dict:
    """``Timesteps`` -> get_timestep_embedding: ``cat([sin, cos], -1)`` (flipped: cat of the two halves)
    -> TimestepEmbedding.linear_1; linear_2 is fed by ``act`` = SiLU."""
    return {f"{prefix}.linear_1": cat(channels // 2, channels // 2), f"{prefix}.linear_2": dual("silu")}


def mmdit_block(prefix: str, dual_attention: bool, context_pre_only: bool) -> dict:
    """JointTransformerBlock (attention.py): norm1 = SD35AdaLayerNormZeroX (9 chunks) with dual attention,
    else AdaLayerNormZero (6); norm1_context = AdaLayerNormContinuous (2) when context_pre_only, else
    AdaLayerNormZero (6). ff/ff_context = FeedForward(activation_fn="gelu-approximate")."""
    out = {
        f"{prefix}.norm1.linear": adaln(9 if dual_attention else 6, 16),
        f"{prefix}.norm1_context.linear": adaln(2 if context_pre_only else 6, 16),
        f"{prefix}.attn.to_out.0": heads(2, 8),
        f"{prefix}.ff.net.2": dual("gelu_tanh"),
    }
    if not context_pre_only:  # to_add_out and ff_context exist only without context_pre_only
        out[f"{prefix}.attn.to_add_out"] = heads(2, 8)
        out[f"{prefix}.ff_context.net.2"] = dual("gelu_tanh")
    if dual_attention:
        out[f"{prefix}.attn2.to_out.0"] = heads(2, 8)
    return out


def sd3_time_text(with_guidance: bool = False) -> dict:
    """CombinedTimestep(Guidance)TextProjEmbeddings: TimestepEmbedding(256 channels) and
    PixArtAlphaTextProjection(act_fn="silu") whose linear_1 is fed by the pooled projection (no pattern)."""
    out = {**timestep_embedder("time_text_embed.timestep_embedder"),
           "time_text_embed.text_embedder.linear_2": dual("silu")}
    if with_guidance:
        out.update(timestep_embedder("time_text_embed.guidance_embedder"))
    return out


def flux_single_block(prefix: str) -> dict:
    """FluxSingleTransformerBlock: AdaLayerNormZeroSingle (3 chunks); proj_out gets
    ``cat([attn_output, act_mlp(proj_mlp(x))], dim=2)``: inner dim 16 + mlp_hidden_dim 4*16."""
    return {f"{prefix}.norm.linear": adaln(3, 16), f"{prefix}.proj_out": cat(16, 64)}


def flux_joint_block(prefix: str) -> dict:
    """FluxTransformerBlock: AdaLayerNormZero for both streams; FluxAttnProcessor merges heads with
    ``flatten(2, 3)`` and splits text/image along the sequence dim (transparent) before to_out/to_add_out."""
    return {
        f"{prefix}.norm1.linear": adaln(6, 16),
        f"{prefix}.norm1_context.linear": adaln(6, 16),
        f"{prefix}.attn.to_out.0": heads(2, 8),
        f"{prefix}.attn.to_add_out": heads(2, 8),
        f"{prefix}.ff.net.2": dual("gelu_tanh"),
        f"{prefix}.ff_context.net.2": dual("gelu_tanh"),
    }


def unet_transformer_block(prefix: str) -> dict:
    """BasicTransformerBlock: AttnProcessor2_0 merges 4 heads x 8; FeedForward(activation_fn="geglu"):
    GEGLU.proj output ``chunk(2, dim=-1)``, ``hidden * gelu(gate)`` feeds net.2."""
    return {
        f"{prefix}.attn1.to_out.0": heads(4, 8),
        f"{prefix}.attn2.to_out.0": heads(4, 8),
        f"{prefix}.ff.net.0.proj": LayerSegments((128, 128), (), None, (P.LINEAR2CHUNK,)),
        f"{prefix}.ff.net.2": dual("geglu"),
    }


def unet_common() -> dict:
    """UNet2DConditionModel/ControlNetModel embeddings: time_proj = Timesteps(block_out_channels[0]=16);
    add_embedding.linear_1 gets ``cat([text_embeds (24), time_embeds (6 x 8 = 48)], dim=-1)``; every
    ResnetBlock2D applies ``time_emb_proj(nonlinearity(temb))`` with SiLU."""
    return {**timestep_embedder("time_embedding", 16), "add_embedding.linear_1": cat(24, 48),
            "add_embedding.linear_2": dual("silu")}


def resnets(*prefixes: str) -> dict:
    return {f"{p}.time_emb_proj": dual("silu") for p in prefixes}


def transformers_2d(prefix: str, n: int) -> dict:
    out = {}
    for i in range(n):
        out.update(unet_transformer_block(f"{prefix}.transformer_blocks.{i}"))
    return out


EXPECTED = {
    "sd3": {
        **sd3_time_text(),
        **mmdit_block("transformer_blocks.0", dual_attention=True, context_pre_only=False),
        **mmdit_block("transformer_blocks.1", dual_attention=True, context_pre_only=False),
        **mmdit_block("transformer_blocks.2", dual_attention=False, context_pre_only=True),
        "norm_out.linear": adaln(2, 16),
    },
    "sd3_controlnet": {  # SD3ControlNetModel: context_pre_only=False everywhere, no norm_out
        **sd3_time_text(),
        **mmdit_block("transformer_blocks.0", dual_attention=True, context_pre_only=False),
        **mmdit_block("transformer_blocks.1", dual_attention=False, context_pre_only=False),
    },
    "flux": {
        **sd3_time_text(with_guidance=True),
        **flux_joint_block("transformer_blocks.0"),
        **flux_joint_block("transformer_blocks.1"),
        **flux_single_block("single_transformer_blocks.0"),
        **flux_single_block("single_transformer_blocks.1"),
        "norm_out.linear": adaln(2, 16),
    },
    "flux_controlnet": {
        **sd3_time_text(with_guidance=True),
        **flux_joint_block("transformer_blocks.0"),
        **flux_single_block("single_transformer_blocks.0"),
    },
    "pixart": {
        # PixArtAlphaCombinedTimestepSizeEmbeddings: three TimestepEmbedding(256) (additional conditions)
        **timestep_embedder("adaln_single.emb.timestep_embedder"),
        **timestep_embedder("adaln_single.emb.resolution_embedder"),
        **timestep_embedder("adaln_single.emb.aspect_ratio_embedder"),
        # AdaLayerNormSingle: linear(silu(emb)); each block: (table[None] + t.reshape(B, 6, -1)).chunk(6, dim=1)
        "adaln_single.linear": adaln(6, 24),
        # caption_projection = PixArtAlphaTextProjection(act_fn="gelu_tanh")
        "caption_projection.linear_2": dual("gelu_tanh"),
        **{k: v for i in range(2) for k, v in {
            f"transformer_blocks.{i}.attn1.to_out.0": heads(3, 8),
            f"transformer_blocks.{i}.attn2.to_out.0": heads(3, 8),
            f"transformer_blocks.{i}.ff.net.2": dual("gelu_tanh"),  # activation_fn="gelu-approximate"
        }.items()},
    },
    "unet": {
        **unet_common(),
        **resnets("down_blocks.0.resnets.0", "down_blocks.1.resnets.0", "mid_block.resnets.0",
                  "mid_block.resnets.1", "up_blocks.0.resnets.0", "up_blocks.0.resnets.1",
                  "up_blocks.1.resnets.0", "up_blocks.1.resnets.1"),
        **transformers_2d("down_blocks.1.attentions.0", 2),  # transformer_layers_per_block=(1, 2)
        **transformers_2d("mid_block.attentions.0", 2),
        **transformers_2d("up_blocks.0.attentions.0", 2),
        **transformers_2d("up_blocks.0.attentions.1", 2),
    },
    "controlnet": {
        **unet_common(),
        **resnets("down_blocks.0.resnets.0", "down_blocks.1.resnets.0", "mid_block.resnets.0",
                  "mid_block.resnets.1"),
        **transformers_2d("down_blocks.1.attentions.0", 2),
        **transformers_2d("mid_block.attentions.0", 2),
    },
}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_exact_table(name):
    model = build_tiny_denoiser(name)
    got = find_layer_segments(model, tiny_example_inputs(name))
    expected = EXPECTED[name]
    linears = {n for n, m in model.named_modules() if type(m).__name__ == "Linear"}
    assert set(expected) <= linears, sorted(set(expected) - linears)  # the table names real layers
    assert sorted(set(got) - set(expected)) == []
    assert sorted(set(expected) - set(got)) == []
    for layer, seg in expected.items():
        assert got[layer] == seg, layer


def test_seg_patterns_only_on_sd3():
    got = find_layer_segments(build_tiny_denoiser("sd3"), tiny_example_inputs("sd3"), P.seg())
    expected = {}
    for layer, seg in EXPECTED["sd3"].items():
        matched = tuple(p for p in seg.matched if p is not P.ACTIVATION2LINEAR)
        if matched:
            expected[layer] = LayerSegments(seg.output_segments, seg.input_segments, None, matched)
    assert got == expected
    assert all(s.dual_scale_activation is None for s in got.values())


def test_sd3_example_as_positional_tuple():
    """No argument names are hard-coded: positional args work as well as kwargs."""
    kw = tiny_example_inputs("sd3")
    args = (kw["hidden_states"], kw["encoder_hidden_states"], kw["pooled_projections"], kw["timestep"])
    got = find_layer_segments(build_tiny_denoiser("sd3"), args)  # returns a Transformer2DModelOutput
    assert got == EXPECTED["sd3"]
