"""Load a diffusers model folder (``save_pretrained`` layout) offline, whatever its class."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from segquant.errors import ConfigError


def load_model_folder(folder: str | Path, torch_dtype: torch.dtype | None = None) -> nn.Module:
    """The model saved in ``folder`` (its ``config.json`` names the diffusers class), in eval mode.

    Loaded with ``local_files_only=True``: nothing is downloaded.
    """
    import diffusers

    folder = Path(folder)
    config = folder / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{folder}: no config.json (not a diffusers model folder)")
    class_name = json.loads(config.read_text()).get("_class_name")
    model_class = getattr(diffusers, str(class_name), None)
    if model_class is None:
        raise ConfigError(f"{config} names class {class_name!r}, which diffusers does not have")
    return model_class.from_pretrained(str(folder), torch_dtype=torch_dtype, local_files_only=True).eval()
