"""Canny control triples from synthetic COCO / MJHQ / DCI / SegQuant-layout folders: content, skipping, resuming."""

import json
from pathlib import Path

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2", reason="Canny control data needs OpenCV: pip install 'segquant[control]'")

from segquant.cli import main  # noqa: E402
from segquant.data.canny import CannySettings, canny_edges, square_resize  # noqa: E402
from segquant.data.control import build_canny_dataset, load_control_dataset  # noqa: E402
from segquant.errors import ConfigError  # noqa: E402

SETTINGS = CannySettings(resolution=32)


def picture(seed: int, h: int = 48, w: int = 64) -> np.ndarray:
    """uint8 RGB (h, w, 3): a dark background with a bright rectangle whose place depends on ``seed``."""
    img = np.full((h, w, 3), 30, np.uint8)
    x = 16 + 3 * seed  # inside the centre square of the 64-wide image, so the crop keeps it
    img[10:38, x: x + 14] = (220, 200, 180)
    return img


def save(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


def coco_folder(root: Path, n: int = 3) -> Path:
    images = [{"id": 10 + i, "file_name": f"{i:012d}.png"} for i in range(n)]
    anns = [{"id": 100 + 2 * i + j, "image_id": 10 + i, "caption": f"caption {i}.{j}"} for i in range(n) for j in (1, 0)]
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "captions_val2017.json").write_text(json.dumps({"images": images, "annotations": anns}))
    for i in range(n):
        save(root / "val2017" / f"{i:012d}.png", picture(i))
    return root


def mjhq_folder(root: Path) -> Path:
    meta = {"a1": {"category": "animals", "prompt": "a cat"}, "p1": {"category": "people", "prompt": "a woman"}}
    root.mkdir(parents=True)
    (root / "meta_data.json").write_text(json.dumps(meta))
    save(root / "animals" / "a1.jpg", picture(0))
    save(root / "people" / "p1.jpg", picture(1))
    return root


def dci_folder(root: Path) -> Path:
    (root / "annotations").mkdir(parents=True)
    for i, name in enumerate(("b.json", "a.json")):
        entry = {"image": f"sa_{i}.jpg", "short_caption": f"short {i}", "extra_caption": f"extra {i}"}
        (root / "annotations" / name).write_text(json.dumps(entry))
        save(root / "photos" / f"sa_{i}.jpg", picture(i))
    return root


def test_canny_edges_outline_the_rectangle_and_respect_the_thresholds():
    img = picture(0)
    edges = canny_edges(img)
    assert edges.dtype == np.uint8 and set(np.unique(edges)) == {0, 255}
    assert edges[24, 16] == 255 or edges[24, 15] == 255  # left side of the rectangle
    assert edges[24, 22] == 0 and edges[2, 2] == 0  # inside it and on the flat background
    faint = np.where(img > 100, np.uint8(50), img)  # a step of 20 grey levels: Sobel gradient ~80 < 100
    assert canny_edges(faint).max() == 0 and canny_edges(faint, low=20, high=50)[24, 15:17].max() == 255


def test_settings_are_validated():
    with pytest.raises(ConfigError, match="blur_kernel"):
        CannySettings(blur_kernel=4)
    with pytest.raises(ConfigError, match="low <= high"):
        CannySettings(low=200, high=100)


def test_coco_triples_first_caption_resized_and_edges_of_the_resized_image(tmp_path):
    report = build_canny_dataset(coco_folder(tmp_path / "coco"), tmp_path / "out", settings=SETTINGS, progress=False)
    assert (report.done, report.new, report.skipped) == (3, 3, [])
    meta = json.loads((tmp_path / "out" / "metadata.json").read_text())
    assert [m["prompt"] for m in meta] == ["caption 0.0", "caption 1.0", "caption 2.0"]  # lowest annotation id
    control = cv2.imread(str(tmp_path / "out" / meta[1]["control"]), cv2.IMREAD_GRAYSCALE)
    expected = canny_edges(square_resize(picture(1), 32))
    assert control.shape == (32, 32) and np.array_equal(control, expected)  # PNG is lossless
    image = cv2.imread(str(tmp_path / "out" / meta[1]["image"]))
    assert image.shape == (32, 32, 3)


@pytest.mark.parametrize("make, prompts", [
    (mjhq_folder, ["a cat", "a woman"]),
    (dci_folder, ["short 1 extra 1", "short 0 extra 0"]),  # annotation files in name order (a.json first)
])
def test_mjhq_and_dci_layouts_are_detected(tmp_path, make, prompts):
    report = build_canny_dataset(make(tmp_path / "src"), tmp_path / "out", settings=SETTINGS, progress=False)
    assert report.done == 2
    data = load_control_dataset(tmp_path / "out")
    assert data.prompts == prompts
    prompt, image, control = data[0]
    assert image.shape == control.shape == (1, 3, 32, 32) and 0.0 <= float(control.min()) < float(control.max()) <= 1.0
    assert load_control_dataset(tmp_path / "out", size=16).control(1).shape == (1, 3, 16, 16)


def test_segquant_layout_is_read_back_and_rebuilt_at_another_resolution(tmp_path):
    build_canny_dataset(mjhq_folder(tmp_path / "src"), tmp_path / "first", settings=SETTINGS, progress=False)
    report = build_canny_dataset(tmp_path / "first", tmp_path / "second", settings=CannySettings(resolution=16),
                                 progress=False)
    assert report.done == 2 and load_control_dataset(tmp_path / "second").control(0).shape == (1, 3, 16, 16)
    assert json.loads((tmp_path / "second" / "build.json").read_text())["settings"]["layout"] == "segquant"


def test_corrupt_and_missing_images_are_named_counted_and_skipped(tmp_path, caplog):
    src = coco_folder(tmp_path / "coco", n=4)
    (src / "val2017" / f"{1:012d}.png").write_bytes(b"not an image at all")
    (src / "val2017" / f"{2:012d}.png").unlink()
    report = build_canny_dataset(src, tmp_path / "out", settings=SETTINGS, progress=False)
    assert report.done == 2 and [k for k, _ in report.skipped] == [f"{1:012d}.png", f"{2:012d}.png"]
    assert "not a decodable image" in report.skipped[0][1] and "cannot read" in report.skipped[1][1]
    assert f"skipped {1:012d}.png" in caplog.text
    assert [m["id"] for m in json.loads((tmp_path / "out" / "metadata.json").read_text())] == [0, 3]


def test_interrupted_build_resumes_without_redoing_finished_items(tmp_path, monkeypatch):
    src, out = coco_folder(tmp_path / "coco", n=4), tmp_path / "out"
    build_canny_dataset(src, out, settings=SETTINGS, progress=False)
    lines = (out / "progress.jsonl").read_text().splitlines()
    (out / "progress.jsonl").write_text("\n".join(lines[:2]) + '\n{"key": "cut sho')  # interrupted mid-line
    (out / "build.json").write_text(json.dumps({**json.loads((out / "build.json").read_text()), "status": "running"}))
    made = []
    import segquant.data.control as control

    real = control.make_triple
    monkeypatch.setattr(control, "make_triple", lambda path, s: made.append(Path(path).name) or real(path, s))
    report = build_canny_dataset(src, out, settings=SETTINGS, progress=False)
    assert made == [f"{2:012d}.png", f"{3:012d}.png"] and (report.done, report.new) == (4, 2)
    assert len(json.loads((out / "metadata.json").read_text())) == 4


def test_other_settings_refuse_to_mix_unless_overwrite(tmp_path):
    src, out = mjhq_folder(tmp_path / "src"), tmp_path / "out"
    build_canny_dataset(src, out, settings=SETTINGS, progress=False)
    with pytest.raises(ConfigError, match="other settings"):
        build_canny_dataset(src, out, settings=CannySettings(resolution=16), progress=False)
    report = build_canny_dataset(src, out, settings=CannySettings(resolution=16), overwrite=True, progress=False)
    assert report.new == 2 and load_control_dataset(out).control(0).shape == (1, 3, 16, 16)


def test_unknown_layout_names_what_it_looked_for(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="unknown layout"):
        build_canny_dataset(tmp_path / "empty", tmp_path / "out", progress=False)


def test_cli_builds_and_reports_skips(tmp_path, capsys):
    src = coco_folder(tmp_path / "coco", n=2)
    (src / "val2017" / f"{0:012d}.png").write_bytes(b"")
    rc = main(["dataset", "canny", str(src), "--out", str(tmp_path / "out"), "--resolution", "24", "--blur", "3"])
    text = capsys.readouterr().out
    assert rc == 0 and f"skipped {0:012d}.png" in text and "1 triples" in text and "1 skipped" in text
    settings = json.loads((tmp_path / "out" / "build.json").read_text())["settings"]["canny"]
    assert settings == {"resolution": 24, "low": 100, "high": 200, "blur_kernel": 3}
