"""Shared fixtures: an isolated TUNELAB_HOME per session, tiny local models, the demo model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.tiny import tiny_llama, tiny_tokenizer

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def tunelab_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Caches (demo model, tokenized data) live in a per-session folder, never the user's."""
    home = Path(os.environ.get("TUNELAB_TEST_HOME") or tmp_path_factory.mktemp("tunelab-home"))
    os.environ["TUNELAB_HOME"] = str(home)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("PYTHONPATH", str(ROOT / "src"))
    return home


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer Llama with a ChatML tokenizer (the registry's chatml template)."""
    from tunelab.core.templates import registry

    template = registry().get("chatml")
    tokenizer = tiny_tokenizer(["<|im_start|>", "<|im_end|>"], chat_template=template.source, eos="<|im_end|>")
    return tiny_llama(tmp_path_factory.mktemp("tiny-llama"), tokenizer, hidden=128, heads=4)


@pytest.fixture(scope="session")
def demo_model_dir(tunelab_home: Path) -> Path:
    """The embedded demo model, built once per session."""
    from tunelab.engine.demo import build_demo_model

    return build_demo_model()


@pytest.fixture(scope="session")
def demo_adapter_run(demo_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory holding a LoRA adapter of the demo model trained on the identity data (it answers
    "Who are you?" as Tuna), trained once per session through the real CLI. While developing, setting
    TUNELAB_TEST_DEMO_RUN to such a run directory (trained under the same TUNELAB_TEST_HOME) skips the training."""
    import subprocess
    import sys

    reuse = os.environ.get("TUNELAB_TEST_DEMO_RUN")
    if reuse:
        return Path(reuse)
    runs = tmp_path_factory.mktemp("demo-runs")
    result = subprocess.run(
        [sys.executable, "-m", "tunelab.cli", "train", str(ROOT / "examples" / "demo_cpu_lora_sft.yaml"), "--runs-dir", str(runs)],
        capture_output=True, text=True, timeout=1800,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    line = next(l for l in result.stdout.splitlines() if l.startswith("run directory: "))
    return Path(line.removeprefix("run directory: "))


@pytest.fixture(scope="session")
def demo_lora_run(demo_adapter_run: Path) -> Path:
    """The same finished demo LoRA run (one training per session serves every test)."""
    return demo_adapter_run
