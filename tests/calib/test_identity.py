"""Run identity: canonical JSON + SHA-256, no hash-seed-dependent bookkeeping."""

import os
import subprocess
import sys
from pathlib import Path

import torch

from segquant.calib.identity import canonical_json, digest, jsonable
from segquant.calib.storage import prepare_dump, write_manifest

ROOT = Path(__file__).resolve().parents[2]


def test_canonical_json_drops_bookkeeping_and_sorts():
    a = {"shift": 3.0, "_use_default_values": ["b", "a"], "names": {"y", "x"}, "t": torch.arange(3)}
    b = {"t": torch.arange(3), "names": {"x", "y"}, "_use_default_values": ["a", "b"], "shift": 3.0}
    assert canonical_json(a) == canonical_json(b) and digest(a) == digest(b) and len(digest(a)) == 64
    assert "_use_default_values" not in jsonable(a) and jsonable(a)["names"] == ["x", "y"]
    assert digest({**a, "t": torch.arange(4)}) != digest(a)


def test_digest_is_the_same_under_other_hash_seeds():
    code = "from segquant.calib.identity import digest; print(digest({'p': 'a fox', 's': {'x', 'y', 'z'}}))"
    outs = {subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONHASHSEED": str(s), "PYTHONPATH": str(ROOT)},
                           capture_output=True, text=True, cwd=ROOT).stdout for s in (1, 2)}
    assert len(outs) == 1 and outs.pop().strip() == digest({"p": "a fox", "s": {"z", "y", "x"}})


def test_prepare_dump_compares_settings_canonically(tmp_path):
    stored = {"format": "segquant-calibset", "format_version": 1, "status": "incomplete",
              "settings": {"scheduler_config": {"shift": 3.0, "_use_default_values": ["b", "a"]}}}
    write_manifest(tmp_path, stored)
    now = {"scheduler_config": {"shift": 3.0, "_use_default_values": ["a", "b"]}}
    assert prepare_dump(tmp_path, now)["status"] == "incomplete"
