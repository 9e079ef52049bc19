"""Multimodal rows: content parts and <image> + images column, relative paths, data URLs, per-row problems."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from PIL import Image

from tunelab.core.datasets import DataError, DatasetSpec, validate_file


def _png(path: Path, colour=(255, 0, 0)) -> Path:
    Image.new("RGB", (8, 8), colour).save(path)
    return path


def _write(tmp_path: Path, rows: list) -> Path:
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    return tmp_path / "rows.json"


def test_placeholder_layout_resolves_paths_relative_to_the_dataset_file(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    _png(tmp_path / "img" / "a.png")
    rows = [{"messages": [{"role": "user", "content": "<image>What colour?"}, {"role": "assistant", "content": "red"}],
             "images": ["img/a.png"]}]
    report = validate_file("x", DatasetSpec(file="rows.json", format="openai"), _write(tmp_path, rows))
    assert not report.problems
    assert report.examples[0]["images"] == [str((tmp_path / "img" / "a.png").resolve())]
    assert report.examples[0]["messages"][0]["content"] == "<image>What colour?"


def test_openai_content_parts_with_data_and_file_urls(tmp_path: Path) -> None:
    data = base64.b64encode(_png(tmp_path / "b.png", (0, 0, 255)).read_bytes()).decode()
    parts = [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}},
             {"type": "text", "text": " and "}, {"type": "image_url", "image_url": {"url": f"file://{tmp_path / 'b.png'}"}},
             {"type": "text", "text": " compare"}]
    rows = [{"messages": [{"role": "user", "content": parts}, {"role": "assistant", "content": "same"}]}]
    report = validate_file("x", DatasetSpec(file="rows.json", format="openai"), _write(tmp_path, rows))
    assert not report.problems
    example = report.examples[0]
    assert example["messages"][0]["content"] == "<image> and <image> compare"
    assert example["images"][0].startswith("data:image/png;base64,") and example["images"][1] == str(tmp_path / "b.png")


def test_bad_rows_are_named_with_row_and_problem(tmp_path: Path) -> None:
    _png(tmp_path / "ok.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    turn = lambda text: [{"role": "user", "content": text}, {"role": "assistant", "content": "x"}]
    rows = [
        {"messages": turn("<image>q"), "images": ["missing.png"]},
        {"messages": turn("<image>q"), "images": ["broken.png"]},
        {"messages": turn("<image><image>q"), "images": ["ok.png"]},
        {"messages": turn("<image>q"), "images": ["ok.png"]},
    ]
    path = _write(tmp_path, rows)
    report = validate_file("x", DatasetSpec(file="rows.json", format="openai"), path)
    assert len(report.examples) == 1
    assert report.problems[0].startswith("row 1: image ") and "no such file" in report.problems[0]
    assert report.problems[1].startswith("row 2: ") and "not a readable image" in report.problems[1]
    assert report.problems[2] == "row 3: 2 <image> placeholder(s) but 1 image(s)"
    with pytest.raises(DataError, match=str(path)):
        report.raise_if_bad()


def test_shipped_image_demo_validates_and_is_small() -> None:
    from tunelab.core.datasets import load_dataset_registry

    registry = load_dataset_registry()
    for name in ("vlm_demo", "vlm_demo_test"):
        name, spec, local = registry.resolve(name)
        report = validate_file(name, spec, local)
        assert not report.problems and all(len(e["images"]) == 1 for e in report.examples)
    train = {e["images"][0] for e in validate_file(*registry.resolve("vlm_demo")).examples}
    test = {e["images"][0] for e in validate_file(*registry.resolve("vlm_demo_test")).examples}
    assert not train & test  # held-out pictures are never trained on
    assert sum(Path(p).stat().st_size for p in train | test) < 2_000_000
