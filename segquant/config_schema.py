"""The typed schema of one layer's settings: frozen dataclasses, the single source of every config key.

Each leaf key is declared once, as a dataclass field made by :func:`setting` (its default, its name in
the dict/YAML language and its validator); each nested section by :func:`section`. Everything else is
derived from these declarations: the built-in defaults (:data:`LAYER_DEFAULTS`), validation of a dict
(:func:`build_layer_config`), the inverse (:func:`layer_config_to_raw`) and edits
(:func:`replace_config`, through :func:`dataclasses.replace`). Adding a key is one ``setting`` line,
plus a line in the class's ``check`` where it constrains other keys.

A validator is ``parse(raw, key, path) -> value``: ``raw`` is the section's mapping, ``path`` the
section's key path for messages; a bad value raises :class:`~segquant.errors.ConfigError` naming
``path.key``, the value and what is allowed.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable, ClassVar, Mapping, TypeVar

from segquant.enums import Calibrate, DType, Optimum, SegPattern
from segquant.errors import ConfigError
from segquant.numerics import Granularity, PerChannel, PerGroup, PerTensor, PerToken

Parse = Callable[[Mapping, str, str], Any]
BACKENDS = ("emulated", "gpu")


def setting(default: Any, parse: Parse, key: str | None = None,
            dump: Callable[[Any], dict] | None = None, unset: dict | None = None) -> Any:
    """A leaf key: its ``default``, its validator, its ``key`` in the dict language (default: the field
    name) and, for a value read from several keys (granularity), ``dump(value) -> {key: raw}`` and
    ``unset``, the raw values of those keys that mean "not given"."""
    return field(default=default, metadata={"parse": parse, "key": key, "dump": dump, "unset": unset})


def section(cls: type, key: str | None = None) -> Any:
    """A nested section whose defaults are those of ``cls``."""
    return field(default=cls(), metadata={"section": cls, "key": key})


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _bool(raw: Mapping, key: str, path: str) -> bool:
    value = raw[key]
    _check(isinstance(value, bool), f"{path}.{key}: {value!r} must be true or false")
    return value


def _number(lo: float, hi: float) -> Parse:
    def parse(raw: Mapping, key: str, path: str) -> float:
        value = raw[key]
        _check(isinstance(value, (int, float)) and not isinstance(value, bool) and lo <= value <= hi,
               f"{path}.{key}: {value!r} must be a number in [{lo}, {hi}]")
        return float(value)
    return parse


def _int(lo: int) -> Parse:
    def parse(raw: Mapping, key: str, path: str) -> int:
        value = raw[key]
        _check(isinstance(value, int) and not isinstance(value, bool) and value >= lo,
               f"{path}.{key}: {value!r} must be an integer >= {lo}")
        return value
    return parse


def _choice(*allowed: str) -> Parse:
    def parse(raw: Mapping, key: str, path: str) -> str:
        _check(raw[key] in allowed, f"{path}.{key}: {raw[key]!r}; allowed: {', '.join(allowed)}")
        return raw[key]
    return parse


def _enum(cls: type) -> Parse:
    return lambda raw, key, path: cls.parse(raw[key], f"{path}.{key}")


def _patterns(raw: Mapping, key: str, path: str) -> tuple[SegPattern, ...]:
    patterns = raw[key]
    _check(isinstance(patterns, (list, tuple)), f"{path}.{key}: {patterns!r} must be a list")
    return tuple(SegPattern.parse(p, f"{path}.{key}") for p in patterns)


def _groupsize(raw: Mapping, key: str, path: str) -> int:
    value = raw[key]
    _check(isinstance(value, int) and not isinstance(value, bool) and (value == -1 or value > 0),
           f"{path}.{key}: {value!r} must be -1 (no groups) or a positive integer")
    return value


def _granularity(axes: dict, allowed: tuple[str, ...]) -> Any:
    """The granularity setting, read from ``granularity``, ``group_size`` and the original API's ``axis``
    (``axes`` maps each allowed axis to the granularity it means)."""

    def parse(raw: Mapping, key: str, path: str) -> Granularity:
        axis = raw["axis"]
        _check((axis is None or type(axis) is int) and axis in axes, f"{path}.axis: {axis!r} is not allowed; "
               f"allowed: {', '.join(repr(a) for a in axes)} (None = per-tensor)")
        name = raw["granularity"]
        if name is None:
            name = "group" if raw["group_size"] else axes[axis]
        _check(name in allowed, f"{path}.granularity: {name!r} is not allowed; allowed: {', '.join(allowed)}")
        if axis is not None and raw["granularity"] is not None:
            _check(axes[axis] == name, f"{path}: axis {axis!r} means per-{axes[axis]}, "
                   f"which contradicts granularity {name!r}; give only one of them")
        if name == "group":
            _check(isinstance(raw["group_size"], int) and raw["group_size"] > 0,
                   f"{path}.group_size: {raw['group_size']!r} must be a positive integer for granularity 'group'")
            return PerGroup(raw["group_size"])
        _check(raw["group_size"] is None, f"{path}.group_size: only allowed with granularity 'group', not {name!r}")
        return {"tensor": PerTensor(), "token": PerToken(), "channel": PerChannel()}[name]

    def dump(value: Granularity) -> dict:
        return {"axis": None, "granularity": value.name, "group_size": getattr(value, "group_size", None)}

    return setting(PerTensor(), parse, dump=dump, unset={"axis": None, "granularity": None, "group_size": None})


class _Section:
    """What every config dataclass has besides its fields."""

    #: Keys of the original API that are accepted and validated but have no effect of their own:
    #: key -> (raw default, validator).
    LEGACY: ClassVar[dict[str, tuple[Any, Parse]]] = {}

    def prepare(self, changes: Mapping, path: str) -> Mapping:
        """Rewrite keys that are other spellings of this section's keys (before validation)."""
        return changes

    def check(self, path: str) -> None:
        """Raise ConfigError on an impossible combination of this section's (valid) values."""


@dataclass(frozen=True)
class TensorQuantConfig(_Section):
    """How one tensor (a layer's input or weight) is quantized. Its subclasses say which granularities
    (and original-API axes) the tensor allows."""

    enable: bool = setting(True, _bool)
    dtype: DType = setting(DType.INT8, _enum(DType), key="type")
    granularity: Granularity = PerTensor()  # validated by each subclass's declaration
    dynamic: bool = setting(False, _bool)
    symmetric: bool = setting(True, _bool)

    def check(self, path: str) -> None:
        _check(self.symmetric or self.dtype.is_int, f"{path}.symmetric: false is only possible for integer types, "
               f"not {self.dtype.value!r}")


@dataclass(frozen=True)
class InputQuantConfig(TensorQuantConfig):
    """``fold_segments``: static symmetric inputs with input segments (attention heads, ``cat`` parts) fold each
    segment's scale into the smoothing vector and so into the weight before it is quantized: the input is still
    quantized with one scale per segment, and the GEMM becomes a plain one (one input scale, one weight scale
    per output channel), at the price of rounding the weight with the segment scales in it. A layer with
    DualScale inputs keeps its segments (two scales per segment do not fold into one weight)."""

    granularity: Granularity = _granularity({None: "tensor", -1: "token"}, ("tensor", "token", "group"))
    fold_segments: bool = setting(False, _bool)

    def check(self, path: str) -> None:
        if not self.dynamic:
            _check(isinstance(self.granularity, PerTensor), f"{path}: static (dynamic: false) activation scales "
                   f"must be per-tensor, got granularity {self.granularity.name!r}; per-token/group scales need "
                   "dynamic: true")
        _check(not self.fold_segments or not self.dynamic and self.symmetric, f"{path}.fold_segments: only static "
               "(dynamic: false), symmetric input scales fold into the weight")
        super().check(path)


@dataclass(frozen=True)
class WeightQuantConfig(TensorQuantConfig):
    """``two_level``: INT4 group scales as integer multiples (1..16) of one scale per output channel
    (QServe's progressive group quantization), so that the GPU can run large GEMMs on INT8 tensor cores.
    It applies to INT4 group-wise weights only; on a layer whose rules make its weights anything else
    (INT8, per-channel) it has no effect."""

    granularity: Granularity = _granularity({None: "tensor", 0: "channel", 1: "channel", -1: "channel"},
                                            ("tensor", "channel", "group"))
    two_level: bool = setting(False, _bool)

    def check(self, path: str) -> None:
        _check(not self.dynamic, f"{path}.dynamic: weights are quantized once, so dynamic must be false")
        super().check(path)


@dataclass(frozen=True)
class AlphaSearchConfig(_Section):
    enable: bool = setting(False, _bool)
    min: float = setting(0.0, _number(0, 1))
    max: float = setting(1.0, _number(0, 1))
    step: float = setting(0.1, _number(1e-6, 1))

    def check(self, path: str) -> None:
        _check(self.min <= self.max, f"{path}: min {self.min} must not exceed max {self.max}")


@dataclass(frozen=True)
class OptConfig(_Section):
    """Transformation before quantization: none, SmoothQuant, or SmoothQuant + SVD low-rank branch."""

    LEGACY = {"verbose": (False, _bool)}

    type: Optimum = setting(Optimum.DEFAULT, _enum(Optimum))
    alpha: float = setting(0.5, _number(0, 1))
    low_rank: int = setting(32, _int(0))
    precision: str = setting("fp16", _choice("fp16", "bf16", "fp32"))
    search_alpha: AlphaSearchConfig = section(AlphaSearchConfig, key="search_alpha_config")

    def check(self, path: str) -> None:
        _check(self.type is not Optimum.SVD or self.low_rank > 0, f"{path}.low_rank: must be > 0 with type 'svd'")


@dataclass(frozen=True)
class CalibConfig(_Section):
    """How weights are quantized (AMAX/percentile/MSE clipping or GPTQ) and how calibration runs.
    ``groupsize`` (original API) is another spelling of ``weight_quant.group_size``."""

    LEGACY = {"verbose": (False, _bool), "groupsize": (-1, _groupsize)}

    type: Calibrate = setting(Calibrate.AMAX, _enum(Calibrate))
    cpu_storage: bool = setting(False, _bool)
    percentile: float = setting(99.99, _number(50, 100))
    blocksize: int = setting(128, _int(1))
    percdamp: float = setting(0.01, _number(0, 1))
    actorder: bool = setting(False, _bool)
    static_groups: bool = setting(False, _bool)
    sequential: bool = setting(False, _bool)


@dataclass(frozen=True)
class LayerConfig(_Section):
    """The fully resolved settings of one linear layer. ``backend``: how its ``SegLinear`` computes
    (``"emulated"``: pure torch, any device; ``"gpu"``: real low-precision kernels; the original API's
    ``real_quant: true`` means ``"gpu"``)."""

    enable: bool = setting(True, _bool)
    seglinear: bool = setting(True, _bool)
    search_patterns: tuple[SegPattern, ...] = setting(tuple(SegPattern.all()), _patterns)
    backend: str = setting("emulated", _choice(*BACKENDS))
    opt: OptConfig = section(OptConfig)
    calib: CalibConfig = section(CalibConfig)
    input_quant: InputQuantConfig = section(InputQuantConfig)
    weight_quant: WeightQuantConfig = section(WeightQuantConfig)

    @property
    def real_quant(self) -> bool:
        """The original API's name for ``backend == "gpu"``."""
        return self.backend == "gpu"

    def prepare(self, changes: Mapping, path: str) -> Mapping:
        return _gptq_groupsize(backend_alias(changes, path), path)


def backend_alias(changes: Mapping, path: str) -> Mapping:
    """Rewrite the original API's ``real_quant`` into ``backend`` (both given and different: ConfigError)."""
    if not isinstance(changes, Mapping) or "real_quant" not in changes:
        return changes
    changes = dict(changes)
    real = _bool(changes, "real_quant", path)
    backend = "gpu" if real else "emulated"
    del changes["real_quant"]
    _check(changes.setdefault("backend", backend) == backend, f"{path}: real_quant: {str(real).lower()} "
           f"contradicts backend: {changes['backend']!r} (real_quant: true means backend 'gpu'); give only one")
    return changes


def _gptq_groupsize(changes: Mapping, path: str) -> Mapping:
    """Move the original API's ``calib.groupsize`` to ``weight_quant.group_size``."""
    calib, weight = changes.get("calib"), changes.get("weight_quant", {})
    if not isinstance(calib, Mapping) or "groupsize" not in calib or not isinstance(weight, Mapping):
        return changes
    groupsize = _groupsize(calib, "groupsize", f"{path}.calib")
    if groupsize == -1:
        return changes
    _check(weight.get("group_size") in (None, groupsize), f"{path}: calib.groupsize {groupsize} contradicts "
           f"weight_quant.group_size {weight.get('group_size')}")
    return {**changes, "weight_quant": {**weight, "group_size": groupsize}}


C = TypeVar("C", bound=_Section)


def _key(f: Any) -> str:
    return f.metadata.get("key") or f.name


def _allowed_keys(cls: type) -> list[str]:
    keys = [*cls.LEGACY]
    for f in fields(cls):
        keys += [*(f.metadata.get("unset") or {})] or [_key(f)]
    return sorted(keys)


def replace_config(config: C, changes: Mapping, path: str = "config") -> C:
    """A copy of ``config`` with ``changes`` applied through :func:`dataclasses.replace`, validated.

    ``changes`` is written in the dict language (``{"opt": {"type": "default"}, "enable": False}``);
    nested sections change key by key, keys not given keep their values. Unknown keys, bad values and
    impossible combinations raise :class:`ConfigError` naming ``path``.
    """
    _check(isinstance(changes, Mapping), f"{path}: expected a mapping, got {type(changes).__name__} {changes!r}")
    changes = config.prepare(changes, path)
    allowed = _allowed_keys(type(config))
    for key in changes:
        _check(key in allowed, f"{path}.{key}: unknown key; allowed keys: {', '.join(allowed)}")
    updates = {}
    for f in fields(config):
        meta, key = f.metadata, _key(f)
        if "section" in meta and key in changes:
            updates[f.name] = replace_config(getattr(config, f.name), changes[key], f"{path}.{key}")
        elif "parse" in meta and ({key, *(meta["unset"] or {})} & set(changes)):
            updates[f.name] = meta["parse"]({**(meta["unset"] or {}), **changes}, key, path)
    for key, (_, parse) in config.LEGACY.items():
        if key in changes:
            parse(changes, key, path)
    result = replace(config, **updates)
    result.check(path)
    return result


def merge(base: dict, override: Mapping, path: str) -> dict:
    """Deep-merge ``override`` into a copy of ``base``; unknown keys raise naming ``path``."""
    if not isinstance(override, Mapping):
        raise ConfigError(f"{path}: expected a mapping, got {type(override).__name__} {override!r}")
    merged = copy.deepcopy(base)
    for key, value in override.items():
        key_path = f"{path}.{key}"
        if key not in base:
            raise ConfigError(f"{key_path}: unknown key; allowed keys: {', '.join(sorted(base))}")
        if isinstance(base[key], dict):
            merged[key] = merge(base[key], value, key_path)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def plain(value: Any) -> Any:
    """Deep copy with enum members replaced by their string values (JSON/YAML friendly)."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value.value if hasattr(value, "value") and isinstance(value, str) else copy.deepcopy(value)


def _raw(config: _Section, defaults: bool) -> dict[str, Any]:
    """``config`` in the dict language; with ``defaults``, keys read together are "not given"."""
    raw: dict[str, Any] = {}
    for f in fields(config):
        meta, key, value = f.metadata, _key(f), getattr(config, f.name)
        if "section" in meta:
            raw[key] = _raw(value, defaults)
        elif meta.get("unset"):
            raw.update(meta["unset"] if defaults else meta["dump"](value))
        else:
            raw[key] = plain(value)
    raw.update({key: default for key, (default, _) in config.LEGACY.items()})
    return raw


#: The built-in defaults in the dict language, derived from the dataclass defaults.
LAYER_DEFAULTS: dict[str, Any] = _raw(LayerConfig(), defaults=True)


def layer_config_to_raw(config: LayerConfig) -> dict[str, Any]:
    """The inverse of :func:`build_layer_config`: a plain dict in the format of :data:`LAYER_DEFAULTS`."""
    return _raw(config, defaults=False)


def build_layer_config(raw: Mapping, path: str = "default") -> LayerConfig:
    """Validate a layer dict (merged over :data:`LAYER_DEFAULTS`) and build its :class:`LayerConfig`."""
    return resolve_layer(((path, raw),))


def resolve_layer(levels: tuple[tuple[str, Mapping], ...]) -> LayerConfig:
    """Merge ``(path, raw)`` levels key by key over :data:`LAYER_DEFAULTS`, in order (a later level wins),
    and build the result; messages name the level's path (the last one for combinations)."""
    merged = LAYER_DEFAULTS
    for path, raw in levels:
        merged = merge(merged, backend_alias(raw, path), path)
    return replace_config(LayerConfig(), merged, levels[-1][0])
