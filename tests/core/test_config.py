"""Config validation: every invalid case raises a helpful error; presets are valid; YAML round trip."""

import copy

import pytest

from segquant.config import QuantConfig, as_quant_config
from segquant.enums import Calibrate, DType, Optimum, SegPattern
from segquant.errors import ConfigError
from segquant.numerics import PerChannel, PerGroup, PerTensor, PerToken
from segquant.presets import PRESETS, get_preset, preset_dict


def test_enum_names_and_values_match_the_original_api():
    assert [(m.name, m.value) for m in DType] == [
        ("INT4", "int4"), ("INT6", "int6"), ("INT8", "int8"), ("INT16", "int16"), ("FP8E4M3", "fpe4m3"),
        ("FP8E5M2", "fpe5m2"), ("FP16", "fp16"), ("BF16", "bf16")]
    assert {m.name for m in Optimum} == {"DEFAULT", "SMOOTH", "SVD"}
    assert {"AMAX", "GPTQ"} <= {m.name for m in Calibrate}
    assert len(SegPattern.all()) == 6 and len(SegPattern.seg()) == 5
    assert SegPattern.ACTIVATION2LINEAR not in SegPattern.seg()
    assert SegPattern.RESHAPE2LINEAR.value == "reshape_to_linear"


@pytest.mark.parametrize("config,fragment", [
    ({"default": {"opt": {"alhpa": 0.5}}}, "default.opt.alhpa: unknown key; allowed keys: alpha"),
    ({"default": {"bogus": 1}}, "default.bogus: unknown key"),
    ({"default": {"weight_quant": {"type": "int3"}}}, "default.weight_quant.type: 'int3' is not a valid DType"),
    ({"default": {"input_quant": {"axis": -1}}}, "static (dynamic: false) activation scales must be per-tensor"),
    ({"default": {"input_quant": {"granularity": "token", "dynamic": False}}}, "must be per-tensor"),
    ({"default": {"weight_quant": {"dynamic": True}}}, "default.weight_quant.dynamic"),
    ({"default": {"weight_quant": {"type": "fpe4m3", "symmetric": False}}}, "only possible for integer"),
    ({"default": {"opt": {"alpha": 1.5}}}, "default.opt.alpha: 1.5 must be a number in [0, 1]"),
    ({"default": {"opt": {"type": "svd", "low_rank": 0}}}, "low_rank: must be > 0"),
    ({"default": {"opt": {"search_alpha_config": {"min": 0.8, "max": 0.2}}}}, "min 0.8 must not exceed max"),
    ({"default": {"weight_quant": {"granularity": "group"}}}, "group_size: None must be a positive integer"),
    ({"default": {"weight_quant": {"granularity": "token"}}}, "'token' is not allowed; allowed: tensor, channel"),
    ({"default": {"weight_quant": {"axis": 1, "granularity": "tensor"}}}, "contradicts granularity"),
    ({"default": {"calib": {"type": "magic"}}}, "default.calib.type: 'magic' is not a valid Calibrate"),
    ({"default": {"calib": {"groupsize": 64}, "weight_quant": {"group_size": 32}}}, "contradicts"),
    ({"default": {"search_patterns": ["linear_to_chunk", "nope"]}}, "default.search_patterns: 'nope'"),
    ({"default": {"seglinear": "yes"}}, "default.seglinear: 'yes' must be true or false"),
    ({"blocks.*.attn": {"enable": 1}}, "blocks.*.attn.enable: 1 must be true or false"),
    ({"re:(unclosed": {"enable": False}}, "invalid regular expression"),
])
def test_invalid_configs_raise_naming_key_and_allowed_values(config, fragment):
    with pytest.raises(ConfigError) as info:
        QuantConfig.from_dict(config)
    assert fragment in str(info.value)


def test_callers_dict_is_never_mutated():
    config = {"default": {"opt": {"type": Optimum.SMOOTH}, "calib": {"groupsize": 64}},
              "fc*": {"weight_quant": {"type": DType.INT4}}}
    snapshot = copy.deepcopy(config)
    QuantConfig.from_dict(config).for_layer("fc1")
    assert config == snapshot


def test_strings_and_enum_members_are_equivalent():
    a = QuantConfig.from_dict({"default": {"weight_quant": {"type": DType.INT4}, "opt": {"type": Optimum.SVD}}})
    b = QuantConfig.from_dict({"default": {"weight_quant": {"type": "int4"}, "opt": {"type": "svd"}}})
    assert a.for_layer("x") == b.for_layer("x")


def test_rules_merge_over_default_in_written_order():
    config = QuantConfig.from_dict({
        "default": {"weight_quant": {"type": "int8", "granularity": "channel"}},
        "blocks.*": {"weight_quant": {"type": "int4"}},
        "re:blocks\\.1\\..*": {"weight_quant": {"type": "int6"}, "enable": True},
        "blocks.1.ff": {"enable": False},
    })
    assert config.for_layer("head").weight_quant.dtype is DType.INT8
    block0 = config.for_layer("blocks.0.attn")
    assert block0.weight_quant.dtype is DType.INT4
    assert block0.weight_quant.granularity == PerChannel()  # kept from default: merged, not replaced
    assert config.for_layer("blocks.1.attn").weight_quant.dtype is DType.INT6
    assert config.for_layer("blocks.1.ff").enable is False
    assert config.unmatched_rules(["head", "blocks.0.attn"]) == ["re:blocks\\.1\\..*", "blocks.1.ff"]


def test_original_axis_keys_map_to_granularities():
    config = QuantConfig.from_dict({"default": {"input_quant": {"type": "int4", "axis": -1, "dynamic": True},
                                                "weight_quant": {"type": "int4", "axis": 1}}})
    layer = config.for_layer("x")
    assert layer.input_quant.granularity == PerToken() and layer.weight_quant.granularity == PerChannel()
    assert QuantConfig.from_dict({}).for_layer("x").input_quant.granularity == PerTensor()


def test_gptq_groupsize_sets_weight_groups():
    layer = QuantConfig.from_dict({"default": {"calib": {"type": "gptq", "groupsize": 32}}}).for_layer("x")
    assert layer.weight_quant.granularity == PerGroup(32)


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_are_valid_and_round_trip_through_yaml(name, tmp_path):
    config = get_preset(name)
    path = tmp_path / f"{name}.yaml"
    config.to_yaml(path)
    again = QuantConfig.from_yaml(path)
    assert again.for_layer("a.b") == config.for_layer("a.b")
    assert as_quant_config(str(path)).for_layer("a.b") == config.for_layer("a.b")


def test_w8a8_original_preset_is_the_original_default():
    layer = get_preset("w8a8_original").for_layer("x")
    assert layer.weight_quant.dtype is DType.INT8 and layer.weight_quant.granularity == PerTensor()
    assert layer.input_quant.dtype is DType.INT8 and not layer.input_quant.dynamic
    assert layer.opt.type is Optimum.SMOOTH and layer.opt.alpha == 0.5
    assert layer.calib.type is Calibrate.AMAX and layer.seglinear
    assert set(layer.search_patterns) == set(SegPattern.all())
    assert SegPattern.ACTIVATION2LINEAR in layer.search_patterns  # DualScale (was LayerConfig.dual_scale)


def test_w8a8_preset_is_segquant_on_per_channel_weights_and_dynamic_per_token_inputs():
    layer = get_preset("w8a8").for_layer("x")
    assert layer.weight_quant.dtype is DType.INT8 and layer.weight_quant.granularity == PerChannel()
    assert layer.input_quant.dtype is DType.INT8 and layer.input_quant.dynamic
    assert layer.input_quant.granularity == PerToken()
    assert layer.opt.type is Optimum.SMOOTH and set(layer.search_patterns) == set(SegPattern.all())
    fast, static = get_preset("w8a8_fast").for_layer("x"), get_preset("w8a8_static").for_layer("x")
    segments = {SegPattern.LINEAR2CHUNK, SegPattern.LINEAR2SPLIT}
    assert set(fast.search_patterns) == segments | {SegPattern.ACTIVATION2LINEAR} and fast.input_quant.dynamic
    ffn_down = get_preset("w8a8_fast").for_layer("transformer_blocks.3.ff_context.net.2")
    assert set(ffn_down.search_patterns) == segments  # no DualScale on the compute-bound FFN down-projection
    assert set(static.search_patterns) == segments and not static.input_quant.dynamic


def test_preset_dict_is_a_fresh_copy_and_unknown_preset_errors():
    preset_dict("w8a8")["default"]["opt"]["alpha"] = 0.9
    assert get_preset("w8a8").for_layer("x").opt.alpha == 0.5
    with pytest.raises(ConfigError, match="available: w8a8"):
        get_preset("w9a9")
    with pytest.raises(ConfigError, match="does not exist"):
        QuantConfig.from_yaml("/nonexistent/config.yaml")
