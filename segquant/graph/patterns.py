"""Graph-based semantic pattern search: which linear layers get segments and which get DualScale.

``find_layer_segments(model, example, patterns)`` captures the model's graph (``capture.py``), runs
the requested matchers (``matchers.py``) on every ``nn.Linear`` call and merges what they say into
one ``LayerSegments`` per layer. No architecture-specific rules: everything comes from the graph.

Merging, per layer: output segments from all matching consumers (chunk and split, over every call of
the layer) are combined into their common refinement (union of segment boundaries); the same for input
segments; the DualScale activation is the first one found (in graph order).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Iterable

from torch import nn

from segquant.devices import model_device, move_to
from segquant.enums import SegPattern
from segquant.graph.capture import CapturedGraph, GraphCaptureError, capture_graph
from segquant.graph.matchers import MATCHERS, Match, refine

logger = logging.getLogger("segquant.graph")


@dataclass(frozen=True)
class LayerSegments:
    """What the graph says about one nn.Linear (keyed by its qualified module name).

    ``output_segments``: sizes along ``out_features`` (sum == N), ``()`` = not segmented.
    ``input_segments``: sizes along ``in_features`` (sum == K), ``()`` = not segmented.
    ``dual_scale_activation``: the activation that feeds the layer, one of
    ``segquant.algorithms.dualscale.ACTIVATION_KINDS`` (``"silu"``, ``"gelu"``, ``"geglu"``...), or None.
    ``matched``: the patterns that produced the above, in ``SegPattern`` order.
    """

    output_segments: tuple[int, ...] = ()
    input_segments: tuple[int, ...] = ()
    dual_scale_activation: str | None = None
    matched: tuple[SegPattern, ...] = field(default=())

    def to_dict(self) -> dict:
        """JSON-friendly form (lists, enum values as strings)."""
        return {
            "output_segments": list(self.output_segments),
            "input_segments": list(self.input_segments),
            "dual_scale_activation": self.dual_scale_activation,
            "matched": [p.value for p in self.matched],
        }

    @classmethod
    def from_dict(cls, d: dict) -> "LayerSegments":
        """Inverse of ``to_dict``; missing keys take their defaults, unknown keys raise ``ValueError``."""
        unknown = set(d) - {"output_segments", "input_segments", "dual_scale_activation", "matched"}
        if unknown:
            raise ValueError(f"LayerSegments: unknown key(s) {sorted(unknown)}")
        return cls(
            output_segments=tuple(int(s) for s in d.get("output_segments", ())),
            input_segments=tuple(int(s) for s in d.get("input_segments", ())),
            dual_scale_activation=d.get("dual_scale_activation"),
            matched=tuple(SegPattern.parse(p, key="matched") for p in d.get("matched", ())),
        )


def _parse_patterns(patterns: Iterable[SegPattern | str]) -> list[SegPattern]:
    parsed = {SegPattern.parse(p, key="patterns") for p in patterns}
    return [p for p in SegPattern if p in parsed]


def merge_matches(matches: list[Match]) -> LayerSegments:
    """One ``LayerSegments`` from the matches of all calls of one layer (see module docstring)."""
    outs = [m.output_segments for m in matches if m.output_segments]
    ins = [m.input_segments for m in matches if m.input_segments]
    acts = [m.activation for m in matches if m.activation]
    if len(set(acts)) > 1:
        logger.debug("layer fed by several activations %s; using %s", sorted(set(acts)), acts[0])
    found = {m.pattern for m in matches}
    return LayerSegments(
        output_segments=refine(outs) if outs else (),
        input_segments=refine(ins) if ins else (),
        dual_scale_activation=acts[0] if acts else None,
        matched=tuple(p for p in SegPattern if p in found),
    )


def match_graph(cg: CapturedGraph, patterns: list[SegPattern]) -> dict[str, LayerSegments]:
    """Run the ``patterns`` matchers on every linear call of a captured graph."""
    per_layer: dict[str, list[Match]] = {}
    for call in cg.linear_calls:
        for pattern in patterns:
            try:
                match = MATCHERS[pattern](call, cg)
            except Exception as exc:  # noqa: BLE001 - a matcher bug must not stop quantization
                logger.warning("%s matcher failed on %s.%s (%s: %s); skipped",
                               pattern.value, cg.model_class, call.module_name, type(exc).__name__, exc)
                continue
            if match is not None:
                per_layer.setdefault(call.module_name, []).append(match)
    return {name: merge_matches(ms) for name, ms in per_layer.items()}


def find_layer_segments(
    model: nn.Module, example: Any, patterns: Iterable[SegPattern | str] = SegPattern.all()
) -> dict[str, LayerSegments]:
    """Capture ``model``'s graph on ``example`` (a Tensor, a tuple of positional args, or a kwargs dict)
    and return an entry for every nn.Linear that matched at least one requested pattern. The example's tensors
    are moved to the model's device first.

    Only the matchers of ``patterns`` run (``SegPattern.seg()`` gives no DualScale entries). On capture
    failure: a warning on ``logging.getLogger("segquant.graph")`` naming the model class and the reason,
    and ``{}`` -- never raises for a model that cannot be captured. ``model`` is not modified.
    """
    wanted = _parse_patterns(patterns)
    if not wanted:
        return {}
    try:
        cg = capture_graph(model, move_to(example, model_device(model)))
    except Exception as exc:  # noqa: BLE001 - GraphCaptureError and anything unexpected
        reason = exc.reason if isinstance(exc, GraphCaptureError) else f"{type(exc).__name__}: {exc}"
        logger.warning("could not capture the graph of %s (%s); quantizing it without segments or DualScale",
                       type(model).__name__, reason)
        return {}
    result = match_graph(cg, wanted)
    logger.info("%s: %d of %d linear calls matched %s", cg.model_class, len(result),
                len(cg.linear_calls), [p.value for p in wanted])
    return result
