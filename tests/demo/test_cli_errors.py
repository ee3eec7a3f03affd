"""`segquant demo` / `segquant eval` reject bad presets and model names at once: a one-line error naming
the culprit, a close-match suggestion, exit 2, no traceback, before any generation."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def segquant(*argv, cwd=ROOT):
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "segquant.cli", *argv], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return proc, time.perf_counter() - t0


@pytest.mark.parametrize("argv, culprit, hint", [
    (["demo", "--presets", "w8a9"], "unknown preset 'w8a9'", "did you mean 'w8a8'?"),
    (["eval", "mmdit", "--presets", "rtn_w8a8,w4a9"], "unknown preset 'w4a9'", "did you mean 'w4a8'?"),
    (["demo", "--models", "mmdt"], "unknown demo model 'mmdt'", "did you mean 'mmdit'?"),
    (["eval", "mmdt"], "unknown model 'mmdt'", "mmdit, flux, unet"),
])
def test_bad_names_fail_fast_with_one_line(argv, culprit, hint):
    proc, seconds = segquant(*argv)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith(f"segquant {argv[0]}: error: ") and culprit in lines[0] and hint in lines[0]
    assert proc.stdout == "" and seconds < 60  # nothing generated


def test_eval_folder_checks(tmp_path, capsys):
    from segquant.cli import main

    proc, _ = segquant("eval", str(tmp_path), "--presets", "w8a8")
    assert proc.returncode == 2 and "no model_index.json" in proc.stderr and str(tmp_path) in proc.stderr
    (tmp_path / "model_index.json").write_text("{}")
    assert main(["eval", str(tmp_path), "--presets", "w8a8"]) == 2
    assert "--prompts is required" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["demo", "--quick", "--presets", "w8a8_serch"], "unknown preset 'w8a8_serch' (did you mean 'w8a8_search'?)"),
    (["eval", "mmdit", "--presets", "missing.yaml"], "--presets: config file 'missing.yaml' not found"),
    (["eval", "unet", "./no/such/folder"], "unknown model './no/such/folder'"),
])
def test_more_bad_names_in_process(argv, message, capsys):
    from segquant.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_parse_presets_in_process(tmp_path):
    from segquant.errors import ConfigError
    from segquant.eval.options import parse_presets
    from segquant.presets import PRESETS

    assert parse_presets("all") == list(PRESETS) and parse_presets(" w8a8 , rtn_w8a8") == ["w8a8", "rtn_w8a8"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("default: {input_quant: {type: int9}}\n")
    with pytest.raises(ConfigError, match="int9"):
        parse_presets(f"w8a8,{bad}")
    with pytest.raises(ConfigError, match="names no preset"):
        parse_presets(" , ")
