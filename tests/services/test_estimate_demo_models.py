"""The estimate knows both embedded demo models, built or not, without building them (and without torch)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tunelab.services.estimate import model_shape


@pytest.mark.parametrize("name", ["demo", "demo-vlm"])
def test_an_unbuilt_demo_has_the_shape_it_will_be_built_with(name: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TUNELAB_HOME", str(tmp_path))
    shape = model_shape(name)
    assert (shape.model_type, shape.hidden, shape.layers, shape.heads) == ("llama", 256, 4, 4)
    assert shape.vocab == 4096 + (name == "demo-vlm")
    assert not (tmp_path / "models").exists(), "the estimate must not build the demo"


def test_a_built_demo_vlm_is_read_from_its_folder(tmp_path: Path, monkeypatch) -> None:
    from tunelab.engine.vlm_demo import demo_vlm_dir

    monkeypatch.setenv("TUNELAB_HOME", str(tmp_path))
    folder = demo_vlm_dir()
    folder.mkdir(parents=True)
    text = dict(model_type="llama", hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4,
                vocab_size=1939)
    (folder / "config.json").write_text(json.dumps({"model_type": "llava", "text_config": text}))
    assert model_shape("demo-vlm").vocab == 1939


def test_estimating_the_demo_vlm_needs_no_torch(tmp_path: Path) -> None:
    code = ("import sys\nfrom tunelab.cli import main\n"
            "assert main(['estimate', 'model=demo-vlm', '--gpu', 'CPU']) == 0\n"
            "assert 'torch' not in sys.modules, 'the estimate imported torch'\n")
    env = {**os.environ, "TUNELAB_HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "estimate:" in done.stdout and "Traceback" not in done.stderr
