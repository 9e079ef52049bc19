"""RunConfig: YAML + overrides, readable validation errors, examples, and the CLI's handling of bad configs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tunelab.core.config import ConfigError, RunConfig, dump_config, field_choices, load_config

ROOT = Path(__file__).resolve().parents[2]


def test_yaml_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("model: demo\nmethod: lora\nlearning_rate: 1.0e-4\ndataset: [identity]\n")
    config = load_config(path, ["learning_rate=5e-5", "dataset=identity,alpaca_demo", "packing=true"])
    assert config.learning_rate == 5e-5 and config.packing is True
    assert config.dataset == ["identity", "alpaca_demo"]


def test_resolved_yaml_round_trips() -> None:
    config = RunConfig(method="qlora", lora_rank=4)
    again = RunConfig.model_validate(yaml.safe_load(dump_config(config)))
    assert again == config and again.quantization == "4bit"  # qlora implies 4-bit


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("method=lorra", ["method", "'lorra'", "full, freeze, lora, qlora"]),
        ("learning_rate=-1", ["learning_rate", "-1", "greater than 0"]),
        ("optimizer=adam", ["optimizer", "adamw_8bit", "paged_adamw_8bit"]),
        ("stage=ppo", ["stage", "'ppo'", "pt", "dpo", "kto"]),
        ("lerning_rate=1e-4", ["lerning_rate", "unknown field", "learning_rate"]),
        ("quantization=4bit", ["quantization", "needs method"]),
        ("batch_size=many", ["batch_size", "'many'"]),
    ],
)
def test_errors_name_field_value_and_choices(override: str, expected: list[str]) -> None:
    extra = ["method=full"] if override.startswith("quantization") else []
    with pytest.raises(ConfigError) as info:
        load_config(None, [override, *extra])
    for fragment in expected:
        assert fragment in str(info.value), (fragment, str(info.value))


def test_choices_come_from_the_schema() -> None:
    assert field_choices("method") == ["full", "freeze", "lora", "qlora"]
    assert "tensorboard" in field_choices("report_to")


@pytest.mark.parametrize("example", sorted((ROOT / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_validates(example: Path) -> None:
    first = example.read_text().splitlines()[0]
    assert first.startswith("# tunelab "), "examples start with the command that runs them"
    load_config(example)


def test_cli_bad_config_is_a_message_not_a_traceback(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("model: demo\nmethod: lorra\nnum_epochs: 0\n")
    result = subprocess.run(
        [sys.executable, "-m", "tunelab.cli", "train", str(config), "--runs-dir", str(tmp_path / "runs")],
        capture_output=True, text=True,
    )
    assert result.returncode == 2
    assert "method: 'lorra' is not valid; valid choices: full, freeze, lora, qlora" in result.stderr
    assert "num_epochs: 0" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists(), "nothing is written for an invalid config"
