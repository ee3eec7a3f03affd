"""The typed config schema: derived defaults, replace_config edits, the backend key, and the checks that
catch a misspelled ``default``, rules that match nothing and malformed YAML."""

import pytest
import yaml

from segquant.config import (LAYER_DEFAULTS, QuantConfig, build_layer_config, layer_config_to_raw,
                             replace_config)
from segquant.enums import DType, Optimum, SegPattern
from segquant.errors import ConfigError
from segquant.numerics import PerChannel, PerGroup, PerTensor
from segquant.presets import PRESETS, get_preset

# The built-in defaults as the hand-kept dict had them before the schema derived them (plus backend, two_level
# and fold_segments).
_LANGUAGE_DEFAULTS = {
    "enable": True, "seglinear": True, "search_patterns": [p.value for p in SegPattern.all()], "backend": "emulated",
    "opt": {"type": "default", "alpha": 0.5, "low_rank": 32, "precision": "fp16",
            "search_alpha_config": {"enable": False, "min": 0.0, "max": 1.0, "step": 0.1}, "verbose": False},
    "calib": {"type": "amax", "cpu_storage": False, "verbose": False, "percentile": 99.99, "blocksize": 128,
              "percdamp": 0.01, "groupsize": -1, "actorder": False, "static_groups": False, "sequential": False},
    "input_quant": {"enable": True, "type": "int8", "axis": None, "granularity": None, "group_size": None,
                    "dynamic": False, "symmetric": True, "fold_segments": False},
    "weight_quant": {"enable": True, "type": "int8", "axis": None, "granularity": None, "group_size": None,
                     "dynamic": False, "symmetric": True, "two_level": False},
}


def test_defaults_are_derived_from_the_dataclasses_and_unchanged():
    assert LAYER_DEFAULTS == _LANGUAGE_DEFAULTS


@pytest.mark.parametrize("name", list(PRESETS))
def test_layer_config_to_raw_is_the_inverse_of_build(name):
    config = get_preset(name).for_layer("x")
    assert build_layer_config(layer_config_to_raw(config), "x") == config


def test_replace_config_changes_only_the_given_keys_and_validates():
    base = get_preset("w4a8").for_layer("x")
    edited = replace_config(base, {"opt": {"type": "default"}, "weight_quant": {"type": "int8"}})
    assert edited.opt.type is Optimum.DEFAULT and edited.opt.low_rank == base.opt.low_rank
    assert edited.weight_quant.dtype is DType.INT8 and edited.weight_quant.granularity == PerGroup(64)
    assert base.opt.type is Optimum.SVD  # frozen original untouched
    assert replace_config(base, {"weight_quant": {"granularity": "channel"}}).weight_quant.granularity == PerChannel()
    with pytest.raises(ConfigError, match=r"x\.input_quant: static \(dynamic: false\) activation scales"):
        replace_config(base, {"input_quant": {"granularity": "token"}}, "x")
    with pytest.raises(ConfigError, match=r"x\.opt\.alhpa: unknown key; allowed keys: alpha"):
        replace_config(base, {"opt": {"alhpa": 0.1}}, "x")
    with pytest.raises(ConfigError, match=r"x\.calib\.percentile: 20 must be a number in \[50, 100\]"):
        replace_config(base, {"calib": {"percentile": 20}}, "x")


def test_replace_config_understands_the_original_aliases():
    base = QuantConfig.from_dict({}).for_layer("x")
    assert replace_config(base, {"calib": {"groupsize": 32}}).weight_quant.granularity == PerGroup(32)
    assert replace_config(base, {"real_quant": True}).backend == "gpu"
    assert replace_config(base, {"weight_quant": {"axis": 0}}).weight_quant.granularity == PerChannel()


def test_backend_key_and_real_quant_alias():
    def backend(config):
        return QuantConfig.from_dict(config).for_layer("blocks.0")

    assert backend({}).backend == "emulated" and not backend({}).real_quant
    assert backend({"default": {"real_quant": True}}).backend == "gpu"
    assert backend({"default": {"backend": "gpu"}}).real_quant
    assert backend({"default": {"real_quant": False, "backend": "emulated"}}).backend == "emulated"
    # each level resolves its own spelling; a later rule wins as for every key
    assert backend({"default": {"real_quant": True}, "blocks.*": {"backend": "emulated"}}).backend == "emulated"
    with pytest.raises(ConfigError, match="default: real_quant: true contradicts backend: 'emulated'"):
        backend({"default": {"real_quant": True, "backend": "emulated"}})
    with pytest.raises(ConfigError, match=r"blocks\.\*: real_quant: false contradicts backend: 'gpu'"):
        backend({"blocks.*": {"real_quant": False, "backend": "gpu"}})
    with pytest.raises(ConfigError, match=r"default\.backend: 'cuda'; allowed: emulated, gpu"):
        backend({"default": {"backend": "cuda"}})
    with pytest.raises(ConfigError, match=r"default\.real_quant: 'yes' must be true or false"):
        backend({"default": {"real_quant": "yes"}})


@pytest.mark.parametrize("key", ["defualt", "Default", "defaults", "dfault"])
def test_a_near_miss_of_default_raises_with_the_suggestion(key):
    with pytest.raises(ConfigError) as info:
        QuantConfig.from_dict({key: {"weight_quant": {"type": "int4"}}})
    assert repr(key) in str(info.value) and "did you mean 'default'" in str(info.value)


def test_a_module_named_like_default_can_still_be_targeted_by_regex():
    config = QuantConfig.from_dict({"re:defaults": {"enable": False}})
    assert config.for_layer("defaults").enable is False


def test_rule_matching_no_layer_raises_without_default_and_is_returned_with_one():
    names = ["blocks.0.attn.to_q", "blocks.0.attn.to_k", "proj_out"]
    rules = {"blocks.*.attn.to_q": {"enable": False}, "proj_outt": {"enable": False}}
    with pytest.raises(ConfigError) as info:
        QuantConfig.from_dict(rules).check_rules(names)
    message = str(info.value)
    assert "'proj_outt'" in message and "closest layer: 'proj_out'" in message and "'default'" in message
    assert "blocks.*.attn.to_q" not in message
    assert QuantConfig.from_dict({"default": {}, **rules}).check_rules(names) == ["proj_outt"]
    assert QuantConfig.from_dict({"proj_out": {"enable": False}}).check_rules(names) == []


def test_config_without_default_round_trips_without_one():
    config = QuantConfig.from_dict({"proj_out": {"enable": False}})
    assert config.to_dict() == {"proj_out": {"enable": False}}
    assert QuantConfig.from_dict(config.to_dict()) == config


def test_malformed_yaml_names_file_and_line_and_chains_the_parser_error(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("default:\n  weight_quant: {type: int4\n  opt: {type: svd}\n")
    with pytest.raises(ConfigError) as info:
        QuantConfig.from_yaml(path)
    assert str(path) in str(info.value) and "not valid YAML at line 3" in str(info.value)
    assert isinstance(info.value.__cause__, yaml.YAMLError)


def test_unreadable_config_file_names_the_file(tmp_path):
    path = tmp_path / "binary.yaml"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match="binary.yaml") as info:
        QuantConfig.from_yaml(path)
    assert info.value.__cause__ is not None


def test_defaults_of_an_empty_config_are_the_dataclass_defaults():
    layer = QuantConfig.from_dict({}).for_layer("x")
    assert layer.weight_quant.granularity == PerTensor() and layer.opt.type is Optimum.DEFAULT
    assert layer.search_patterns == tuple(SegPattern.all())


@pytest.mark.parametrize("tensor,fragment", [
    ({"axis": [1]}, "default.weight_quant.axis: [1] is not allowed"),
    ({"axis": True}, "default.weight_quant.axis: True is not allowed"),
    ({"granularity": ""}, "default.weight_quant.granularity: '' is not allowed"),
])
def test_odd_granularity_values_raise_config_error(tensor, fragment):
    with pytest.raises(ConfigError) as info:
        QuantConfig.from_dict({"default": {"weight_quant": tensor}})
    assert fragment in str(info.value)
