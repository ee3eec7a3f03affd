"""Prompt files: plain lines, CSV/TSV, COCO, PartiPrompts, MJHQ-30K, DCI, JSON/JSONL; clear errors."""

import json
from pathlib import Path

import pytest

from segquant.data.prompts import load_prompts
from segquant.errors import ConfigError

_SHARED = [Path(__file__).resolve().parents[3] / "shared" / "data" / "prompts", Path("/work/shared/data/prompts")]
SHARED = next((p for p in _SHARED if p.is_dir()), None)


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_lines_skip_empty(tmp_path):
    path = write(tmp_path, "p.txt", "a red fox\n\n  a blue car  \n")
    assert load_prompts(path) == ["a red fox", "a blue car"]
    assert load_prompts(path, limit=1) == ["a red fox"]


def test_csv_with_quoted_commas_and_caption_column(tmp_path):
    path = write(tmp_path, "p.csv", 'id,Caption\n1,"a cat, sleeping"\n2,a dog\n')
    assert load_prompts(path) == ["a cat, sleeping", "a dog"]


def test_tsv_prompt_column(tmp_path):
    path = write(tmp_path, "p.tsv", "Prompt\tCategory\nbond\tAbstract\nan owl\tAnimals\n")
    assert load_prompts(path) == ["bond", "an owl"]


def test_missing_prompt_column_names_file_and_columns(tmp_path):
    path = write(tmp_path, "bad.csv", "file_name,label\na.jpg,3\n")
    with pytest.raises(ConfigError, match=r"bad\.csv.*\['file_name', 'label'\]"):
        load_prompts(path)


def test_coco_annotations_json(tmp_path):
    data = {"images": [], "annotations": [{"image_id": 1, "id": 5, "caption": "a bus"}, {"image_id": 2, "id": 6, "caption": "a tree"}]}
    path = write(tmp_path, "captions_val2014.json", json.dumps(data))
    assert load_prompts(path) == ["a bus", "a tree"]
    assert load_prompts(path, format="coco") == ["a bus", "a tree"]


def test_mjhq_meta_data(tmp_path):
    data = {"abc": {"category": "people", "prompt": "a portrait"}, "def": {"category": "food", "prompt": "a cake"}}
    path = write(tmp_path, "meta_data.json", json.dumps(data))
    assert load_prompts(path) == ["a portrait", "a cake"]
    assert load_prompts(path, format="mjhq", limit=1) == ["a portrait"]


def test_dci_file_and_folder(tmp_path):
    folder = tmp_path / "annotations"
    folder.mkdir()
    (folder / "b.json").write_text(json.dumps({"image": "b.jpg", "short_caption": "a bridge", "mask_data": {}}))
    (folder / "a.json").write_text(json.dumps({"image": "a.jpg", "short_caption": "a lake", "extra_caption": "at dusk"}))
    assert load_prompts(folder) == ["a lake at dusk", "a bridge"]
    assert load_prompts(folder, dci_extra_caption=False) == ["a lake", "a bridge"]
    assert load_prompts(folder / "a.json") == ["a lake at dusk"]


def test_json_list_and_jsonl(tmp_path):
    assert load_prompts(write(tmp_path, "l.json", json.dumps(["x", {"prompt": "y"}]))) == ["x", "y"]
    assert load_prompts(write(tmp_path, "l.jsonl", '{"text": "u"}\n{"text": "v"}\n')) == ["u", "v"]


def test_errors(tmp_path):
    with pytest.raises(ConfigError, match="format"):
        load_prompts(write(tmp_path, "p.txt", "a"), format="xml")
    with pytest.raises(ConfigError, match="does not exist"):
        load_prompts(tmp_path / "nope.txt")
    with pytest.raises(ConfigError, match="not a coco prompt file"):
        load_prompts(write(tmp_path, "x.json", json.dumps({"k": 1})), format="coco")


@pytest.mark.skipif(SHARED is None, reason="shared prompt files not present")
def test_shared_coco_and_parti_files():
    coco = load_prompts(SHARED / "coco_val2014_30k.csv")
    assert len(coco) == 30000 and coco[0] == "A small dog is curled up on top of the shoes"
    parti = load_prompts(SHARED / "PartiPrompts.tsv")
    assert len(parti) == 1632 and parti[:2] == ["bond", "element"]
