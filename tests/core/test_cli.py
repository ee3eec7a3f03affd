"""The segquant command: --version, inspect on a built-in model and on a local diffusers folder."""

import json

import pytest

import segquant
from segquant.cli import main
from segquant.models.tiny import build_tiny_denoiser


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert segquant.__version__ in capsys.readouterr().out


def test_inspect_builtin_prints_plan_and_writes_json(capsys, tmp_path):
    assert main(["inspect", "sd3", "--json", str(tmp_path / "plan.json")]) == 0
    out = capsys.readouterr().out
    assert "transformer_blocks.0.norm1.linear" in out and "9x16" in out and "graph captured: True" in out
    plan = json.loads((tmp_path / "plan.json").read_text())
    layers = {layer["name"]: layer for layer in plan["layers"]}
    assert layers["norm_out.linear"]["output_segments"] == [16, 16]


def test_inspect_local_diffusers_folder(capsys, tmp_path):
    build_tiny_denoiser("flux").save_pretrained(tmp_path / "flux")
    assert main(["inspect", str(tmp_path / "flux"), "--config", "rtn_w8a8"]) == 0
    out = capsys.readouterr().out
    assert "single_transformer_blocks.0.proj_out" in out


def test_inspect_unknown_model_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="neither a built-in model"):
        main(["inspect", str(tmp_path / "missing")])
