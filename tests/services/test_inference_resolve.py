"""What users type for --model / --adapter becomes a ModelSpec: run directories, adapter folders, names."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tunelab.core.generation import InferenceError
from tunelab.services.inference import resolve_adapter, resolve_spec


def fake_adapter(folder: Path, base: str, rank: int = 8) -> Path:
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": base, "r": rank}))
    return folder


def fake_run(root: Path, name: str, model: str, weights: str = "adapter") -> Path:
    run = root / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(f"model: {model}\n")
    if weights == "adapter":
        fake_adapter(run / "adapter", "/elsewhere/when-trained", rank=32)
    elif weights == "model":
        (run / "model").mkdir()
        (run / "model" / "config.json").write_text("{}")
    return run


def test_run_directory_gives_its_adapter_and_base_model(tmp_path: Path, tiny_model_dir: Path) -> None:
    run = fake_run(tmp_path, "20260101-000000-tiny-lora-sft", str(tiny_model_dir))
    spec = resolve_spec(None, [str(run)])
    assert spec.path == str(tiny_model_dir.resolve()) and spec.name == tiny_model_dir.name
    assert [(a.name, a.path, a.rank) for a in spec.adapters] == [(run.name, str((run / "adapter").resolve()), 32)]
    # the run's config names the base model, not the path adapter_config.json recorded at training time
    assert spec.adapters[0].base_model == str(tiny_model_dir) and not spec.warnings
    # a run given as --model means the same thing
    assert resolve_spec(str(run), []).names() == spec.names()


def test_adapter_folders_names_and_duplicates(tmp_path: Path, tiny_model_dir: Path) -> None:
    one = fake_adapter(tmp_path / "a" / "identity", str(tiny_model_dir))
    two = fake_adapter(tmp_path / "b" / "identity", "some/other-model")
    spec = resolve_spec(str(tiny_model_dir), [str(one), str(two), f"custom={one}"])
    assert spec.names() == [tiny_model_dir.name, "identity", "identity-2", "custom"]
    assert len(spec.warnings) == 1 and "some/other-model" in spec.warnings[0]


def test_full_model_run_is_a_model_not_an_adapter(tmp_path: Path, tiny_model_dir: Path) -> None:
    run = fake_run(tmp_path, "full-run", str(tiny_model_dir), weights="model")
    shutil.copy(tiny_model_dir / "config.json", run / "model" / "config.json")
    with pytest.raises(InferenceError, match="saved a full model, not an adapter; use --model"):
        resolve_adapter(str(run))
    assert resolve_spec(str(run), []).path == str((run / "model").resolve())


@pytest.mark.parametrize(
    "model, adapters, message",
    [
        ("./no/such/folder", [], "is not a folder here"),
        (None, [], "give --model"),
        ("demo", ["/no/such/adapter"], "does not exist"),
    ],
)
def test_bad_targets_say_what_to_give(model: str | None, adapters: list[str], message: str) -> None:
    with pytest.raises(InferenceError, match=message):
        resolve_spec(model, adapters)


def test_folder_that_is_neither(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(InferenceError, match="neither an adapter folder"):
        resolve_adapter(str(tmp_path / "empty"))
    with pytest.raises(InferenceError, match="without config.json"):
        resolve_spec(str(tmp_path / "empty"))
    unfinished = fake_run(tmp_path, "unfinished", "demo", weights="none")
    with pytest.raises(InferenceError, match="no saved adapter yet"):
        resolve_adapter(str(unfinished))
