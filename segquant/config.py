"""The configuration language: frozen, validated dataclasses built from a dict, a YAML file or a preset.

A config is ``{"default": {...}, <layer rule>: {...}, ...}``. ``default`` is merged over the built-in
defaults (:data:`LAYER_DEFAULTS`); each layer rule is a glob (``"transformer_blocks.*.attn.to_q"``) or a
regular expression (``"re:.*ff\\.net\\.2"``, matched with :func:`re.fullmatch`) on the qualified module
name. **Precedence**: built-in defaults < ``default`` < every matching rule, in the order written (a later
rule overrides an earlier one). Merging is key by key, so a rule only needs the keys it changes. One
top-level key is a model setting instead: ``fuse_projections: true`` makes :func:`segquant.quantize` fuse each
attention's q / k / v projections first (:func:`segquant.fuse_projections`: one smoothing and one GEMM for the
three, the fastest W8A8 on the GPU) and keep the fused layers whole.

Everything is validated when the config is built: an unknown key, a bad value or an impossible
combination raises :class:`~segquant.errors.ConfigError` naming the key path, the value and what is
allowed. A top-level key that looks like a misspelled ``default`` raises too, and so does (when the plan
is built) a rule that matches no layer of a config without ``default``. The caller's dict is never
mutated.

This module is the public entry point; the pieces live in :mod:`segquant.config_schema` (the typed
settings of one layer, the single source of every key and default), :mod:`segquant.config_rules`
(:class:`QuantConfig`: default + rules) and :mod:`segquant.presets`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from segquant.config_rules import QuantConfig, rule_matches
from segquant.config_schema import (LAYER_DEFAULTS, AlphaSearchConfig, CalibConfig, InputQuantConfig, LayerConfig,
                                    OptConfig, TensorQuantConfig, WeightQuantConfig, build_layer_config,
                                    layer_config_to_raw, replace_config)
from segquant.errors import ConfigError
from segquant.presets import PRESETS, get_preset

__all__ = ["LAYER_DEFAULTS", "AlphaSearchConfig", "CalibConfig", "InputQuantConfig", "LayerConfig", "OptConfig",
           "QuantConfig", "TensorQuantConfig", "WeightQuantConfig", "as_quant_config", "build_layer_config",
           "layer_config_to_raw", "replace_config", "rule_matches"]


def as_quant_config(config: "QuantConfig | Mapping | str | Path | None") -> QuantConfig:
    """Accept a QuantConfig, a config dict, a preset name, a YAML path, or None (the W8A8 SegQuant preset)."""
    if config is None:
        return get_preset("w8a8")
    if isinstance(config, QuantConfig):
        return config
    if isinstance(config, Mapping):
        return QuantConfig.from_dict(config)
    if isinstance(config, (str, Path)):
        if str(config) in PRESETS:
            return get_preset(str(config))
        if Path(config).suffix.lower() in (".yaml", ".yml", ".json"):
            return QuantConfig.from_yaml(config)
        raise ConfigError(f"config {str(config)!r} is neither a preset ({', '.join(PRESETS)}) nor a YAML file")
    raise ConfigError(f"config: unsupported type {type(config).__name__}")
