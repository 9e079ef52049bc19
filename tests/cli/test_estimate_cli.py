"""`tunelab estimate` and `tunelab train --estimate`: the estimate printed without training, the GPU picked by name,
bad input answered in one line, and token lengths measured by `tunelab data check` used when they exist."""

from __future__ import annotations

import json
from pathlib import Path

from tunelab.cli import main

LLAMA8B = dict(model_type="llama", vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
               num_attention_heads=32, num_key_value_heads=8)


def model_folder(tmp_path: Path) -> Path:
    """A folder with only the 8B config.json: all the estimate reads (no weights are needed)."""
    folder = tmp_path / "llama8b"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(LLAMA8B))
    return folder


def test_estimate_prints_memory_speed_time_and_the_verdict(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    model = model_folder(tmp_path)
    assert main(["estimate", f"model={model}", "dataset=identity", "method=full", "gradient_checkpointing=true",
                 "--gpu", "H100"]) == 0
    out = capsys.readouterr().out
    assert "GiB of 80 GiB on H100" in out and "tok/s" in out and "/epoch" in out
    assert "may not fit" in out or "does not fit" in out
    assert "would fit better with optimizer=adamw_8bit" in out
    assert main(["train", f"model={model}", "dataset=identity", "method=qlora", "--estimate", "--gpu", "RTX 4090"]) == 0
    out = capsys.readouterr().out
    assert "of 24 GiB on RTX 4090" in out and "fits (" in out and "not measured" in out
    assert not (tmp_path / "runs").exists(), "--estimate must not create a run"
    assert main(["estimate", f"model={model}", "dataset=identity", "--gpu", "H200", "--json"]) == 0
    event = json.loads(capsys.readouterr().out)
    assert event["device"] == "H200" and event["fits"] and event["path"] == "fast" and event["reserved_gib"] > 15


def test_bad_input_is_one_line_without_a_traceback(tmp_path: Path, capsys) -> None:
    assert main(["estimate", "model=demo", "--gpu", "V100"]) == 2
    err = capsys.readouterr().err
    assert "gpu: 'V100' is not valid; valid choices: auto, a GPU index, H200" in err and "Traceback" not in err
    assert main(["estimate", f"model={tmp_path}/missing", "dataset=identity"]) == 2
    assert "no config.json for" in capsys.readouterr().err
    assert main(["estimate", "model=demo", "batch_size=0"]) == 2
    assert "batch_size" in capsys.readouterr().err


def test_estimate_uses_the_lengths_data_check_measured(tiny_model_dir: Path, capsys) -> None:
    model = str(tiny_model_dir)
    assert main(["estimate", f"model={model}", "dataset=identity", "--gpu", "CPU"]) == 0
    guessed = capsys.readouterr().out
    assert "estimated from characters" in guessed
    assert main(["data", "check", "identity", "--model", model]) == 0
    capsys.readouterr()
    assert main(["estimate", f"model={model}", "dataset=identity", "--gpu", "CPU"]) == 0
    measured = capsys.readouterr().out
    assert "measured by `tunelab data check`" in measured
    tokens = [int(line.split("epoch: ")[1].split(" tokens")[0].replace(",", "")) for line in (guessed, measured)
              for line in line.splitlines() if "epoch: " in line]
    assert len(tokens) == 2 and tokens[0] != tokens[1]  # the tiny tokenizer's real count replaced the guess
