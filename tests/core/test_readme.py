"""The README's config example is valid and means what its comments say."""

import re
from pathlib import Path

import yaml

from segquant.config import QuantConfig
from segquant.numerics import PerGroup

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_yaml_config_is_valid():
    block = re.search(r"```yaml\n(.*?)```", README.read_text(), re.S).group(1)
    config = QuantConfig.from_dict(yaml.safe_load(block))
    assert config.for_layer("transformer_blocks.0.attn.to_q").weight_quant.granularity == PerGroup(64)
    assert config.for_layer("transformer_blocks.1.attn.to_q").weight_quant.dtype.value == "int8"
    assert config.for_layer("single_blocks.3.proj_out").enable is False
    assert config.for_layer("x").opt.search_alpha.enable is True
