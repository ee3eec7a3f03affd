"""The quantization plan: one plain-data decision per linear layer, built before any calibration.

``build_plan(model, config, example)`` resolves each ``nn.Linear``'s config (default + rules), asks the
graph which segments and DualScale the layer gets, and derives the :class:`SegLinearSpec` it will be
converted to. A plan prints as an aligned table, saves to / loads from JSON, and can be edited by the
user (``plan.override(name, ...)``) before calibration and conversion.
"""

from __future__ import annotations

import difflib
import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from torch import nn

from segquant.algorithms.dualscale import uses_dualscale
from segquant.algorithms.svd import max_useful_rank
from segquant.config import (LayerConfig, QuantConfig, as_quant_config, build_layer_config, layer_config_to_raw,
                             replace_config)
from segquant.enums import DType, Optimum, SegPattern
from segquant.errors import ConfigError, UnknownLayerError
from segquant.nn.spec import AlphaSearch, LayerSettings, SegLinearSpec
from segquant.numerics import PerGroup

logger = logging.getLogger("segquant.plan")

_OUTPUT_PATTERNS = {SegPattern.LINEAR2CHUNK, SegPattern.LINEAR2SPLIT}
_INPUT_PATTERNS = {SegPattern.CONCAT2LINEAR, SegPattern.STACK2LINEAR, SegPattern.RESHAPE2LINEAR}


@dataclass
class LayerPlan:
    """Everything decided about one linear layer. ``chosen`` is filled by ``convert`` from the conversion's
    record (alpha, rank, errors); :meth:`spec` and :meth:`settings` are the conversion's typed inputs."""

    name: str
    in_features: int
    out_features: int
    has_bias: bool
    config: LayerConfig
    rules: tuple[str, ...] = ()
    output_segments: tuple[int, ...] = ()
    input_segments: tuple[int, ...] = ()
    dual_scale_activation: str | None = None
    patterns: tuple[SegPattern, ...] = ()
    notes: list[str] = field(default_factory=list)
    chosen: dict[str, Any] = field(default_factory=dict)

    @property
    def enabled(self) -> bool:
        return self.config.enable

    def spec(self) -> SegLinearSpec:
        """The layout of the ``SegLinear`` this layer becomes."""
        cfg, inp, wq = self.config, self.config.input_quant, self.config.weight_quant
        folded = self.input_segments if self.folds_input_segments() else ()
        input_segments = (self.in_features,) if folded else self.input_segments or (self.in_features,)
        output_segments = self.output_segments or (self.out_features,)
        return SegLinearSpec(
            in_features=self.in_features, out_features=self.out_features,
            output_segments=output_segments, input_segments=input_segments,
            input_dtype=inp.dtype if inp.enable else None, input_dynamic=inp.dynamic,
            input_granularity=inp.granularity, input_symmetric=inp.symmetric,
            dual_scale=uses_dualscale(self.dual_scale_activation, inp.enable),
            weight_dtype=wq.dtype if wq.enable else None,
            weight_scale_columns=weight_scale_columns(input_segments, self.weight_group_size()),
            weight_two_level=self.two_level(),
            smooth=cfg.opt.type in (Optimum.SMOOTH, Optimum.SVD) and inp.enable and wq.enable,
            low_rank=self.low_rank(),
            low_rank_precision=cfg.opt.precision, has_bias=self.has_bias, folded_input_segments=folded)

    def folds_input_segments(self) -> bool:
        """Whether the static scales of this layer's input segments fold into its smoothing (``input_quant.
        fold_segments`` asked, quantized weights and inputs, more than one input segment, no DualScale)."""
        inp = self.config.input_quant
        return (inp.fold_segments and inp.enable and self.config.weight_quant.enable and len(self.input_segments) > 1
                and not uses_dualscale(self.dual_scale_activation, inp.enable))

    def settings(self) -> LayerSettings:
        """The algorithm settings of this layer's conversion (alpha or its search, clipping, GPTQ)."""
        opt, calib, search = self.config.opt, self.config.calib, self.config.opt.search_alpha
        return LayerSettings(
            alpha=opt.alpha, alpha_search=AlphaSearch(search.min, search.max, search.step) if search.enable else None,
            weight_method=calib.type, weight_granularity=self.config.weight_quant.granularity,
            weight_two_level=self.two_level(),
            percentile=calib.percentile, gptq_blocksize=calib.blocksize, gptq_percdamp=calib.percdamp,
            gptq_actorder=calib.actorder, gptq_static_groups=calib.static_groups)

    def two_level(self) -> bool:
        """Whether the weight scales are two-level: asked for, and INT4 group-wise weights."""
        wq = self.config.weight_quant
        return wq.two_level and wq.enable and wq.dtype is DType.INT4 and isinstance(wq.granularity, PerGroup)

    def low_rank(self) -> int:
        """Rank of the SVD branch: the configured one, capped per output segment by
        :func:`~segquant.algorithms.svd.max_useful_rank` (0: no branch)."""
        if self.config.opt.type is not Optimum.SVD or not self.config.weight_quant.enable:
            return 0
        narrowest = min(self.output_segments or (self.out_features,))
        return min(self.config.opt.low_rank, max_useful_rank(narrowest, self.in_features))

    def weight_group_size(self) -> int | None:
        """The weight scales' group size, or None when they are not group-wise."""
        return self.settings().weight_group_size

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "in_features": self.in_features, "out_features": self.out_features,
                "has_bias": self.has_bias, "rules": list(self.rules),
                "output_segments": list(self.output_segments), "input_segments": list(self.input_segments),
                "dual_scale_activation": self.dual_scale_activation,
                "patterns": [p.value for p in self.patterns], "notes": list(self.notes),
                "chosen": self.chosen, "config": layer_config_to_raw(self.config)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LayerPlan":
        return cls(name=d["name"], in_features=d["in_features"], out_features=d["out_features"],
                   has_bias=d["has_bias"], config=build_layer_config(d["config"], d["name"]),
                   rules=tuple(d["rules"]), output_segments=tuple(d["output_segments"]),
                   input_segments=tuple(d["input_segments"]), dual_scale_activation=d["dual_scale_activation"],
                   patterns=tuple(SegPattern(p) for p in d["patterns"]), notes=list(d["notes"]),
                   chosen=dict(d["chosen"]))


def weight_scale_columns(input_segments: tuple[int, ...], group_size: int | None) -> int:
    """``G``: one scale column per input segment, or per group of ``group_size`` columns."""
    return sum(size // group_size for size in input_segments) if group_size else len(input_segments)


@dataclass
class QuantPlan:
    """The plan of a whole model: a :class:`LayerPlan` per ``nn.Linear`` (disabled ones included)."""

    layers: dict[str, LayerPlan]
    config: dict[str, Any]
    graph_captured: bool = False

    def enabled_layers(self) -> list[LayerPlan]:
        return [layer for layer in self.layers.values() if layer.enabled]

    def override(self, name: str, **config_changes: Any) -> None:
        """Change one layer's config before conversion, e.g. ``plan.override("proj_out", enable=False)``."""
        if name not in self.layers:
            close = difflib.get_close_matches(name, list(self.layers), n=3)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else f" ({len(self.layers)} layers)"
            raise UnknownLayerError(f"plan.override: no linear layer named {name!r} in the plan{hint}")
        layer = self.layers[name]
        config = replace_config(layer.config, config_changes, name)
        self.layers[name] = _fit_to_layer(replace(layer, config=config))

    def table(self) -> str:
        """An aligned text table of the plan, one row per linear layer."""
        header = ("layer", "shape", "patterns", "out segments", "in segments", "dualscale", "weight", "input",
                  "opt", "calib", "chosen")
        rows = [_table_row(layer) for layer in self.layers.values()]
        widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
        lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header, *rows]]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"format": "segquant-plan/1", "graph_captured": self.graph_captured, "config": self.config,
                "layers": [layer.to_dict() for layer in self.layers.values()]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "QuantPlan":
        if d.get("format") != "segquant-plan/1":
            raise ConfigError(f"not a segquant plan (format {d.get('format')!r}, expected 'segquant-plan/1')")
        layers = {ld["name"]: LayerPlan.from_dict(ld) for ld in d["layers"]}
        return cls(layers=layers, config=d["config"], graph_captured=d["graph_captured"])

    def save_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load_json(cls, path: str | Path) -> "QuantPlan":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"plan file {str(path)!r} does not exist")
        return cls.from_dict(json.loads(path.read_text()))


def _segments_text(segments: tuple[int, ...]) -> str:
    if len(segments) <= 1:
        return "-"
    if len(set(segments)) == 1:
        return f"{len(segments)}x{segments[0]}"
    return "+".join(str(s) for s in segments)


def _table_row(layer: LayerPlan) -> tuple[str, ...]:
    cfg = layer.config
    if not layer.enabled:
        return (layer.name, f"{layer.out_features}x{layer.in_features}", "-", "-", "-", "-", "off", "off", "-", "-",
                "")
    spec = layer.spec()
    weight = f"{spec.weight_dtype.value}/{cfg.weight_quant.granularity.name}" if spec.weight_dtype else "none"
    inp = "none" if spec.input_dtype is None else (
        f"{spec.input_dtype.value}/{cfg.input_quant.granularity.name}/"
        f"{'dyn' if spec.input_dynamic else 'static'}")
    opt = cfg.opt.type.value + (f"(r={spec.low_rank})" if spec.low_rank else "")
    return (layer.name, f"{layer.out_features}x{layer.in_features}",
            ",".join(p.value for p in layer.patterns) or "-", _segments_text(layer.output_segments),
            _segments_text(layer.input_segments) + (" folded" if spec.folded_input_segments else ""),
            layer.dual_scale_activation or "-", weight, inp, opt,
            cfg.calib.type.value, _chosen_text(layer.chosen))


def _chosen_text(chosen: dict[str, Any]) -> str:
    """What calibration decided, compactly: smoothing alpha per segment and output error vs RTN."""
    parts = []
    if "alpha" in chosen:
        alphas = ["off" if a is None else f"{a:g}" for a in chosen["alpha"]]
        parts.append("alpha=" + (alphas[0] if len(set(alphas)) == 1 else ",".join(alphas)))
    if "error" in chosen:
        parts.append(f"err {chosen['rtn_error']:.1e}->{chosen['error']:.1e}")
    return " ".join(parts)


def linear_layers(model: nn.Module) -> dict[str, nn.Linear]:
    """Every ``nn.Linear`` of ``model`` by qualified name (SegLinear layers are already quantized)."""
    return {name: module for name, module in model.named_modules() if type(module) is nn.Linear}


def build_plan(model: nn.Module, config: "QuantConfig | dict | str | None" = None, example: Any = None,
               ) -> QuantPlan:
    """Resolve every linear layer's config and (when an example input is given) its graph segments."""
    config = as_quant_config(config)
    linears = linear_layers(model)
    if not linears:
        logger.warning("%s has no nn.Linear layer: the plan is empty and nothing will be quantized",
                       type(model).__name__)
    for rule in config.check_rules(list(linears)):
        logger.warning("config rule %r matches no linear layer of %s", rule, type(model).__name__)
    layers = {name: LayerPlan(name, m.in_features, m.out_features, m.bias is not None, config.for_layer(name),
                              config.matching_rules(name)) for name, m in linears.items()}
    wanted = {p for layer in layers.values() if layer.enabled and layer.config.seglinear
              for p in layer.config.search_patterns}
    captured = False
    if wanted and example is not None:
        from segquant.graph import find_layer_segments

        found = find_layer_segments(model, example, sorted(wanted, key=list(SegPattern).index))
        captured = bool(found)
        for name, segments in found.items():
            if name in layers:
                layers[name] = _apply_segments(layers[name], segments)
    elif wanted:
        logger.warning("no example input: segment patterns were not searched for %s", type(model).__name__)
    return QuantPlan({name: _fit_to_layer(layer) for name, layer in layers.items()}, config.to_dict(), captured)


def _apply_segments(layer: LayerPlan, segments: Any) -> LayerPlan:
    """Keep the graph's findings that this layer's own ``search_patterns`` ask for."""
    if not (layer.enabled and layer.config.seglinear):
        return layer
    asked = set(layer.config.search_patterns) & set(segments.matched)
    return replace(
        layer, patterns=tuple(p for p in segments.matched if p in asked),
        output_segments=tuple(segments.output_segments) if asked & _OUTPUT_PATTERNS else (),
        input_segments=tuple(segments.input_segments) if asked & _INPUT_PATTERNS else (),
        dual_scale_activation=segments.dual_scale_activation
        if SegPattern.ACTIVATION2LINEAR in asked else None)


def _fit_to_layer(layer: LayerPlan) -> LayerPlan:
    """Replace group sizes that do not divide every input segment (weights: per-channel; inputs:
    per-token scales), with a note; note an SVD rank capped for a narrow layer (see ``LayerPlan.low_rank``)."""
    segments = layer.input_segments or (layer.in_features,)
    for tensor, fallback in (("weight_quant", "channel"), ("input_quant", "token")):
        granularity = getattr(layer.config, tensor).granularity
        if isinstance(granularity, PerGroup) and any(size % granularity.group_size for size in segments):
            note = (f"{tensor.split('_')[0]} group {granularity.group_size} does not divide input segments "
                    f"{list(segments)}: per-{fallback}")
            config = replace_config(layer.config, {tensor: {"granularity": fallback}}, layer.name)
            layer = replace(layer, config=config, notes=[*layer.notes, note])
    cfg = layer.config
    if layer.enabled and cfg.opt.type is Optimum.SVD and cfg.weight_quant.enable and layer.low_rank() < cfg.opt.low_rank:
        narrowest = min(layer.output_segments or (layer.out_features,))
        effect = f"rank {layer.low_rank()}" if layer.low_rank() else "no SVD branch"
        note = (f"svd rank {cfg.opt.low_rank} is too high for a {narrowest}x{layer.in_features} weight (segment) to "
                f"stay quantized: {effect} (at most min(n, K) // 4)")
        layer = replace(layer, notes=[*layer.notes, note])
    return layer

