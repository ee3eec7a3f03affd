"""A whole model's config: the ``default`` layer settings plus ordered per-layer rules (:class:`QuantConfig`).

See :mod:`segquant.config` for the language. The typed settings of one layer are in
:mod:`segquant.config_schema`.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from segquant.config_schema import LayerConfig, plain, resolve_layer
from segquant.errors import ConfigError


#: The top-level key that is a model setting, not a layer rule (:attr:`QuantConfig.fuse_projections`).
FUSE_KEY = "fuse_projections"
#: The layers that diffusers' q / k / v fusion makes -> the projections each concatenates (diffusers' names; used by
#: :mod:`segquant.models.fusion` and by the presets' rules for the attention projections).
FUSED_FROM = {"to_qkv": ("to_q", "to_k", "to_v"), "to_kv": ("to_k", "to_v"),
              "to_added_qkv": ("add_q_proj", "add_k_proj", "add_v_proj")}


def rule_matches(rule: str, name: str) -> bool:
    """Whether a layer rule (glob, or ``re:`` regular expression) matches a qualified module name."""
    if rule.startswith("re:"):
        return re.fullmatch(rule[3:], name) is not None
    return fnmatch.fnmatchcase(name, rule)


def _check_rule(rule: Any) -> None:
    """A rule is a non-empty string, a valid ``re:`` expression, and not a misspelled ``default``."""
    if not (isinstance(rule, str) and rule):
        raise ConfigError(f"layer rule {rule!r} must be a non-empty string")
    if rule.startswith("re:"):
        try:
            re.compile(rule[3:])
        except re.error as err:
            raise ConfigError(f"{rule}: invalid regular expression ({err})") from None
    elif close := difflib.get_close_matches(rule.lower(), ["default", FUSE_KEY], n=1, cutoff=0.8):
        raise ConfigError(f"{rule!r}: did you mean {close[0]!r}? A top-level key other than 'default' and "
                          f"'{FUSE_KEY}' is a layer rule; to target a module really named so, write the rule as "
                          f"'re:{re.escape(rule)}'")


@dataclass(frozen=True)
class QuantConfig:
    """A validated config: the ``default`` layer settings (``None``: not given) plus ordered rules, and
    ``fuse_projections``: whether :func:`segquant.quantize` first fuses the model's q / k / v projections
    (:func:`segquant.fuse_projections`; the fused layers kept whole)."""

    default_raw: Mapping[str, Any] | None
    rules: tuple[tuple[str, Mapping[str, Any]], ...] = ()
    fuse_projections: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.fuse_projections, bool):
            raise ConfigError(f"fuse_projections: {self.fuse_projections!r} is not a boolean (true or false)")
        self._resolve((), ())
        for rule, raw in self.rules:
            _check_rule(rule)
            self._resolve((rule,), (raw,))

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> "QuantConfig":
        """Build from ``{"default": {...}, <rule>: {...}}``; the dict is not modified."""
        if not isinstance(config, Mapping):
            raise ConfigError(f"config must be a mapping, got {type(config).__name__}")
        rules = plain(config)
        default, fuse = rules.pop("default", None), rules.pop(FUSE_KEY, False)
        return cls(default, tuple(rules.items()), fuse)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "QuantConfig":
        """Build from a YAML (or JSON) file; an unreadable or malformed file raises naming file and line."""
        import yaml

        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        try:
            config = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(err, "problem", None) or err
            raise ConfigError(f"config file {str(path)!r} is not valid YAML{where}: {problem}") from err
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"config file {str(path)!r} cannot be read as text: {err}") from err
        return cls.from_dict(config or {})

    def to_dict(self) -> dict[str, Any]:
        default = {} if self.default_raw is None else {"default": plain(self.default_raw)}
        fuse = {FUSE_KEY: True} if self.fuse_projections else {}
        return {**default, **fuse, **{rule: plain(raw) for rule, raw in self.rules}}

    def with_rules(self, rules: Mapping[str, Mapping[str, Any]]) -> "QuantConfig":
        """This config with ``rules`` appended (they override the earlier ones where both match)."""
        return QuantConfig(self.default_raw, self.rules + tuple(plain(rules).items()), self.fuse_projections)

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
            levels = (("default", self.default_raw or {}), *zip(rules, raws))
            cache[rules] = resolve_layer(levels)
        return cache[rules]

    def unmatched_rules(self, names: list[str]) -> list[str]:
        """Rules that match none of ``names``."""
        return [rule for rule, _ in self.rules if not any(rule_matches(rule, n) for n in names)]

    def check_rules(self, names: list[str]) -> list[str]:
        """The rules that match none of the layer ``names`` (for the caller to warn about).

        Without a ``default`` the rules are the only settings, so one that matches nothing (a misspelled
        layer name or ``default``) raises :class:`ConfigError` naming it, with the closest layer name.
        """
        unmatched = self.unmatched_rules(names)
        if unmatched and self.default_raw is None:
            hints = [f"{rule!r} (closest layer: {close[0]!r})" if (close := difflib.get_close_matches(
                rule, names, n=1, cutoff=0.5)) else repr(rule) for rule in unmatched]
            raise ConfigError(f"config rule(s) {', '.join(hints)} match no linear layer, and the config has no "
                              f"'default' to apply instead; fix the rule or add a 'default' ({len(names)} layers, "
                              f"e.g. {names[:3]})")
        return unmatched
