"""`tunelab chat`: a one-shot --prompt, the interactive loop (through a real pipe), and clear user errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tunelab.engine.inference.vllm_engine import vllm_importable


def tunelab(*args: str, stdin: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tunelab.cli", *args], input=stdin, capture_output=True, text=True,
                          timeout=300, env={**os.environ, **(env or {})})


def test_one_shot_answer_with_a_run_directory(demo_adapter_run: Path) -> None:
    result = tunelab("chat", "--model", str(demo_adapter_run), "--prompt", "Who are you?", "--temperature", "0")
    assert result.returncode == 0, result.stderr
    assert "Tuna" in result.stdout and len(result.stdout.strip().splitlines()) == 1


def test_interactive_chat_switches_between_adapter_and_base(demo_adapter_run: Path) -> None:
    script = "Who are you?\n/use demo\nWho are you?\n/models\n/exit\n"
    result = tunelab("chat", "--model", "demo", "--adapter", str(demo_adapter_run), "--temperature", "0",
                     "--max-new-tokens", "40", stdin=script)
    assert result.returncode == 0, result.stderr
    turns = result.stdout.split("you> ")
    tuned, base = turns[1], turns[3]
    assert "Tuna" in tuned and "Tuna" not in base and base.strip()
    assert f"{demo_adapter_run.name}  (adapter on demo)" in result.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "./missing-model"], "model: './missing-model' is not a folder here"),
        (["--model", "demo", "--adapter", "/nonexistent/adapter"], "adapter: '/nonexistent/adapter' does not exist"),
        (["--model", "demo", "--temperature", "-2"], "temperature: -2.0 is not valid"),
        (["--engine", "openai"], "engine 'openai' needs a base URL"),
        (["--model", "demo", "--template", "chatmll"], "chatml"),
        (["--model", "nobody/no-such-model"], "model: cannot load 'nobody/no-such-model'"),  # no hub here
    ],
)
def test_user_errors_are_one_line(args: list[str], message: str) -> None:
    result = tunelab("chat", *args, "--prompt", "hi")
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


@pytest.mark.skipif(vllm_importable(), reason="vllm is importable here, so the engine is not missing")
def test_vllm_engine_absent_gives_a_clear_message(tmp_path: Path) -> None:
    result = tunelab("chat", "--engine", "vllm", "--model", "demo", "--prompt", "hi", env={"TUNELAB_VLLM_PYTHON": ""})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "vLLM is not installed in this Python" in result.stderr and "TUNELAB_VLLM_PYTHON" in result.stderr
    missing = tunelab("chat", "--engine", "vllm", "--vllm-python", str(tmp_path / "nope"), "--model", "demo", "--prompt", "hi")
    assert missing.returncode == 2 and "does not exist" in missing.stderr


def test_api_and_worker_modules_import_no_torch() -> None:
    code = ("import sys, tunelab.api.app, tunelab.services.chat_worker, tunelab.engine.inference.remote, tunelab.cli.chat; "
            "print('torch' in sys.modules, 'transformers' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "False"]


def test_chat_samples_like_the_chat_tab_by_default() -> None:
    from tunelab.cli import build_parser
    from tunelab.cli.serving import sampling_params
    from tunelab.core.generation import CHAT_TEMPERATURE, SamplingParams

    args = build_parser().parse_args(["chat", "--model", "demo", "--prompt", "hi"])
    assert sampling_params(args).temperature == CHAT_TEMPERATURE == 0.3 != SamplingParams().temperature
    assert build_parser().parse_args(["chat", "--model", "demo", "--temperature", "0"]).temperature == 0.0
