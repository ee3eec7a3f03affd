"""The configuration language: frozen, validated dataclasses built from a dict or a YAML file.

A config is ``{"default": {...}, <layer rule>: {...}, ...}``. ``default`` is merged over the built-in
defaults (:data:`LAYER_DEFAULTS`); each layer rule is a glob (``"transformer_blocks.*.attn.to_q"``) or a
regular expression (``"re:.*ff\\.net\\.2"``, matched with :func:`re.fullmatch`) on the qualified module
name. **Precedence**: built-in defaults < ``default`` < every matching rule, in the order written (a later
rule overrides an earlier one). Merging is key by key, so a rule only needs the keys it changes.

Everything is validated when the config is built: an unknown key, a bad value or an impossible
combination raises :class:`~segquant.errors.ConfigError` naming the key path, the value and what is
allowed. The caller's dict is never mutated.
"""

from __future__ import annotations

import copy
import fnmatch
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from segquant.enums import Calibrate, DType, Optimum, SegPattern
from segquant.errors import ConfigError
from segquant.numerics import Granularity, PerChannel, PerGroup, PerTensor, PerToken

LAYER_DEFAULTS: dict[str, Any] = {
    "enable": True,
    "seglinear": True,
    "search_patterns": [p.value for p in SegPattern.all()],
    "real_quant": False,
    "opt": {
        "type": "default",
        "alpha": 0.5,
        "low_rank": 32,
        "precision": "fp16",
        "search_alpha_config": {"enable": False, "min": 0.0, "max": 1.0, "step": 0.1},
        "verbose": False,
    },
    "calib": {
        "type": "amax",
        "cpu_storage": False,
        "verbose": False,
        "percentile": 99.99,
        "blocksize": 128,
        "percdamp": 0.01,
        "groupsize": -1,
        "actorder": False,
        "static_groups": False,
        "sequential": False,
    },
    "input_quant": {"enable": True, "type": "int8", "axis": None, "granularity": None, "group_size": None,
                    "dynamic": False, "symmetric": True},
    "weight_quant": {"enable": True, "type": "int8", "axis": None, "granularity": None, "group_size": None,
                     "dynamic": False, "symmetric": True},
}


@dataclass(frozen=True)
class TensorQuantConfig:
    """How one tensor (a layer's input or weight) is quantized."""

    enable: bool
    dtype: DType
    granularity: Granularity
    dynamic: bool
    symmetric: bool


@dataclass(frozen=True)
class AlphaSearchConfig:
    enable: bool
    min: float
    max: float
    step: float


@dataclass(frozen=True)
class OptConfig:
    """Transformation before quantization: none, SmoothQuant, or SmoothQuant + SVD low-rank branch."""

    type: Optimum
    alpha: float
    low_rank: int
    precision: str
    search_alpha: AlphaSearchConfig


@dataclass(frozen=True)
class CalibConfig:
    """How weights are quantized (AMAX/percentile/MSE clipping or GPTQ) and how calibration runs."""

    type: Calibrate
    cpu_storage: bool
    percentile: float
    blocksize: int
    percdamp: float
    actorder: bool
    static_groups: bool
    sequential: bool


@dataclass(frozen=True)
class LayerConfig:
    """The fully resolved settings of one linear layer."""

    enable: bool
    seglinear: bool
    search_patterns: tuple[SegPattern, ...]
    real_quant: bool
    opt: OptConfig
    calib: CalibConfig
    input_quant: TensorQuantConfig
    weight_quant: TensorQuantConfig

    @property
    def dual_scale(self) -> bool:
        """DualScale is used where the graph shows activation -> linear and the pattern is searched."""
        return self.seglinear and SegPattern.ACTIVATION2LINEAR in self.search_patterns


def _merge(base: dict, override: Mapping, path: str) -> dict:
    """Deep-merge ``override`` into a copy of ``base``; unknown keys raise naming ``path``."""
    if not isinstance(override, Mapping):
        raise ConfigError(f"{path}: expected a mapping, got {type(override).__name__} {override!r}")
    merged = copy.deepcopy(base)
    for key, value in override.items():
        key_path = f"{path}.{key}"
        if key not in base:
            raise ConfigError(f"{key_path}: unknown key; allowed keys: {', '.join(sorted(base))}")
        if isinstance(base[key], dict):
            merged[key] = _merge(base[key], value, key_path)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _bool(raw: dict, key: str, path: str) -> bool:
    value = raw[key]
    _check(isinstance(value, bool), f"{path}.{key}: {value!r} must be true or false")
    return value


def _number(raw: dict, key: str, path: str, lo: float, hi: float) -> float:
    value = raw[key]
    _check(isinstance(value, (int, float)) and not isinstance(value, bool) and lo <= value <= hi,
           f"{path}.{key}: {value!r} must be a number in [{lo}, {hi}]")
    return float(value)


def _int(raw: dict, key: str, path: str, lo: int) -> int:
    value = raw[key]
    _check(isinstance(value, int) and not isinstance(value, bool) and value >= lo,
           f"{path}.{key}: {value!r} must be an integer >= {lo}")
    return value


_AXIS_MEANING = {"input_quant": {None: "tensor", -1: "token"}, "weight_quant": {None: "tensor", 0: "channel",
                                                                               1: "channel", -1: "channel"}}
_ALLOWED_GRANULARITY = {"input_quant": ("tensor", "token", "group"), "weight_quant": ("tensor", "channel", "group")}


def _granularity(raw: dict, path: str, which: str) -> Granularity:
    """Resolve ``granularity`` (or the original API's ``axis``) and ``group_size`` to a granularity type."""
    axis_map = _AXIS_MEANING[which]
    _check(raw["axis"] in axis_map, f"{path}.axis: {raw['axis']!r} is not allowed; allowed: "
           f"{', '.join(repr(a) for a in axis_map)} (None = per-tensor)")
    name = raw["granularity"]
    if name is None:
        name = "group" if raw["group_size"] else axis_map[raw["axis"]]
    allowed = _ALLOWED_GRANULARITY[which]
    _check(name in allowed, f"{path}.granularity: {name!r} is not allowed; allowed: {', '.join(allowed)}")
    if raw["axis"] is not None and raw["granularity"] is not None:
        _check(axis_map[raw["axis"]] == name, f"{path}: axis {raw['axis']!r} means per-{axis_map[raw['axis']]}, "
               f"which contradicts granularity {name!r}; give only one of them")
    if name == "group":
        _check(isinstance(raw["group_size"], int) and raw["group_size"] > 0,
               f"{path}.group_size: {raw['group_size']!r} must be a positive integer for granularity 'group'")
        return PerGroup(raw["group_size"])
    _check(raw["group_size"] is None, f"{path}.group_size: only allowed with granularity 'group', not {name!r}")
    return {"tensor": PerTensor(), "token": PerToken(), "channel": PerChannel()}[name]


def _tensor_quant(raw: dict, path: str, which: str) -> TensorQuantConfig:
    dtype = DType.parse(raw["type"], f"{path}.type")
    granularity = _granularity(raw, path, which)
    dynamic, symmetric = _bool(raw, "dynamic", path), _bool(raw, "symmetric", path)
    if which == "weight_quant":
        _check(not dynamic, f"{path}.dynamic: weights are quantized once, so dynamic must be false")
    elif not dynamic:
        _check(isinstance(granularity, PerTensor), f"{path}: static (dynamic: false) activation scales must be "
               f"per-tensor, got granularity {granularity.name!r}; per-token/group scales need dynamic: true")
    _check(symmetric or dtype.is_int, f"{path}.symmetric: false is only possible for integer types, "
           f"not {dtype.value!r}")
    return TensorQuantConfig(_bool(raw, "enable", path), dtype, granularity, dynamic, symmetric)


def _opt(raw: dict, path: str) -> OptConfig:
    search = raw["search_alpha_config"]
    spath = f"{path}.search_alpha_config"
    alpha_search = AlphaSearchConfig(_bool(search, "enable", spath), _number(search, "min", spath, 0, 1),
                                     _number(search, "max", spath, 0, 1), _number(search, "step", spath, 1e-6, 1))
    _check(alpha_search.min <= alpha_search.max, f"{spath}: min {alpha_search.min} must not exceed max "
           f"{alpha_search.max}")
    precision = raw["precision"]
    _check(precision in ("fp16", "bf16", "fp32"), f"{path}.precision: {precision!r}; allowed: fp16, bf16, fp32")
    _bool(raw, "verbose", path)
    opt = OptConfig(Optimum.parse(raw["type"], f"{path}.type"), _number(raw, "alpha", path, 0, 1),
                    _int(raw, "low_rank", path, 0), precision, alpha_search)
    _check(opt.type is not Optimum.SVD or opt.low_rank > 0, f"{path}.low_rank: must be > 0 with type 'svd'")
    return opt


def _calib(raw: dict, path: str) -> CalibConfig:
    _bool(raw, "verbose", path)
    return CalibConfig(Calibrate.parse(raw["type"], f"{path}.type"), _bool(raw, "cpu_storage", path),
                       _number(raw, "percentile", path, 50, 100), _int(raw, "blocksize", path, 1),
                       _number(raw, "percdamp", path, 0, 1), _bool(raw, "actorder", path),
                       _bool(raw, "static_groups", path), _bool(raw, "sequential", path))


def _apply_gptq_groupsize(raw: dict, path: str) -> dict:
    """The original API's ``calib.groupsize`` is another spelling of weight group granularity."""
    groupsize = raw["calib"]["groupsize"]
    _check(isinstance(groupsize, int) and not isinstance(groupsize, bool) and (groupsize == -1 or groupsize > 0),
           f"{path}.calib.groupsize: {groupsize!r} must be -1 (no groups) or a positive integer")
    if groupsize == -1:
        return raw
    weight = raw["weight_quant"]
    _check(weight["group_size"] in (None, groupsize), f"{path}: calib.groupsize {groupsize} contradicts "
           f"weight_quant.group_size {weight['group_size']}")
    raw = copy.deepcopy(raw)
    raw["weight_quant"]["group_size"] = groupsize
    return raw


def build_layer_config(raw: Mapping, path: str = "default") -> LayerConfig:
    """Validate a complete (merged) layer dict and build its :class:`LayerConfig`."""
    raw = _apply_gptq_groupsize(_merge(LAYER_DEFAULTS, raw, path), path)
    patterns = raw["search_patterns"]
    _check(isinstance(patterns, (list, tuple)), f"{path}.search_patterns: {patterns!r} must be a list")
    return LayerConfig(
        enable=_bool(raw, "enable", path),
        seglinear=_bool(raw, "seglinear", path),
        search_patterns=tuple(SegPattern.parse(p, f"{path}.search_patterns") for p in patterns),
        real_quant=_bool(raw, "real_quant", path),
        opt=_opt(raw["opt"], f"{path}.opt"),
        calib=_calib(raw["calib"], f"{path}.calib"),
        input_quant=_tensor_quant(raw["input_quant"], f"{path}.input_quant", "input_quant"),
        weight_quant=_tensor_quant(raw["weight_quant"], f"{path}.weight_quant", "weight_quant"),
    )


def _plain(value: Any) -> Any:
    """Deep copy with enum members replaced by their string values (JSON/YAML friendly)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value.value if hasattr(value, "value") and isinstance(value, str) else copy.deepcopy(value)


def rule_matches(rule: str, name: str) -> bool:
    """Whether a layer rule (glob, or ``re:`` regular expression) matches a qualified module name."""
    if rule.startswith("re:"):
        return re.fullmatch(rule[3:], name) is not None
    return fnmatch.fnmatchcase(name, rule)


@dataclass(frozen=True)
class QuantConfig:
    """A validated config: the ``default`` layer settings plus ordered per-layer rules."""

    default_raw: Mapping[str, Any]
    rules: tuple[tuple[str, Mapping[str, Any]], ...] = ()

    def __post_init__(self) -> None:
        build_layer_config(self.default_raw, "default")
        for rule, raw in self.rules:
            _check(isinstance(rule, str) and rule, f"layer rule {rule!r} must be a non-empty string")
            if rule.startswith("re:"):
                try:
                    re.compile(rule[3:])
                except re.error as err:
                    raise ConfigError(f"{rule}: invalid regular expression ({err})") from None
            self._resolve((rule,), (raw,))

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> "QuantConfig":
        """Build from ``{"default": {...}, <rule>: {...}}``; the dict is not modified."""
        _check(isinstance(config, Mapping), f"config must be a mapping, got {type(config).__name__}")
        plain = _plain(config)
        default = plain.pop("default", {})
        return cls(default, tuple(plain.items()))

    @classmethod
    def from_yaml(cls, path: str | Path) -> "QuantConfig":
        import yaml

        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        with path.open() as handle:
            return cls.from_dict(yaml.safe_load(handle) or {})

    def to_dict(self) -> dict[str, Any]:
        return {"default": _plain(self.default_raw), **{rule: _plain(raw) for rule, raw in self.rules}}

    def to_yaml(self, path: str | Path) -> None:
        import yaml

        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    def matching_rules(self, name: str) -> tuple[str, ...]:
        return tuple(rule for rule, _ in self.rules if rule_matches(rule, name))

    def for_layer(self, name: str) -> LayerConfig:
        """The resolved config of module ``name`` (default merged with every matching rule, in order)."""
        matched = self.matching_rules(name)
        raws = tuple(raw for rule, raw in self.rules if rule in matched)
        return self._resolve(matched, raws)

    def _resolve(self, rules: tuple[str, ...], raws: tuple[Mapping, ...]) -> LayerConfig:
        cache = self.__dict__.setdefault("_cache", {})
        if rules not in cache:
            merged = _merge(LAYER_DEFAULTS, self.default_raw, "default")
            for rule, raw in zip(rules, raws):
                merged = _merge(merged, raw, rule)
            cache[rules] = build_layer_config(merged, rules[-1] if rules else "default")
        return cache[rules]

    def unmatched_rules(self, names: list[str]) -> list[str]:
        """Rules that match none of ``names`` (reported by ``quantize``)."""
        return [rule for rule, _ in self.rules if not any(rule_matches(rule, n) for n in names)]


def as_quant_config(config: "QuantConfig | Mapping | str | Path | None") -> QuantConfig:
    """Accept a QuantConfig, a config dict, a preset name, a YAML path, or None (the W8A8 SegQuant preset)."""
    from segquant.presets import PRESETS, get_preset

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


def layer_config_to_raw(config: LayerConfig) -> dict[str, Any]:
    """The inverse of :func:`build_layer_config`: a plain dict in the format of :data:`LAYER_DEFAULTS`."""

    def tensor(t: TensorQuantConfig) -> dict[str, Any]:
        group = getattr(t.granularity, "group_size", None)
        return {"enable": t.enable, "type": t.dtype.value, "axis": None, "granularity": t.granularity.name,
                "group_size": group, "dynamic": t.dynamic, "symmetric": t.symmetric}

    opt, calib, search = config.opt, config.calib, config.opt.search_alpha
    return {
        "enable": config.enable, "seglinear": config.seglinear,
        "search_patterns": [p.value for p in config.search_patterns], "real_quant": config.real_quant,
        "opt": {"type": opt.type.value, "alpha": opt.alpha, "low_rank": opt.low_rank, "precision": opt.precision,
                "search_alpha_config": {"enable": search.enable, "min": search.min, "max": search.max,
                                        "step": search.step}, "verbose": False},
        "calib": {"type": calib.type.value, "cpu_storage": calib.cpu_storage, "verbose": False,
                  "percentile": calib.percentile, "blocksize": calib.blocksize, "percdamp": calib.percdamp,
                  "groupsize": -1, "actorder": calib.actorder, "static_groups": calib.static_groups,
                  "sequential": calib.sequential},
        "input_quant": tensor(config.input_quant), "weight_quant": tensor(config.weight_quant),
    }
