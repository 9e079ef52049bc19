"""Shared fixtures: an isolated TUNELAB_HOME per session, tiny local models, the demo model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.tiny import tiny_llama, tiny_tokenizer

ROOT = Path(__file__).resolve().parents[1]
VLM_PICTURE = ROOT / "data" / "vlm_demo" / "test_000.png"  # a held-out demo picture (never trained on)
VLM_QUESTION = "What colour are the shapes?"


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


# Tests that took 3 s or more in a full run on 2 CPU cores, listed in tests/slow_tests.txt (written from a
# `pytest --durations=0` output by tests/slow_tests.py): marked slow here, in one place, so `make test-fast`
# (-m 'not slow') skips them. A test can also carry @pytest.mark.slow itself.
SLOW_TESTS = {line for line in (ROOT / "tests" / "slow_tests.txt").read_text().splitlines() if line and not line.startswith("#")}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Add the slow marker to the tests listed in SLOW_TESTS (parametrized cases by their base name)."""
    for item in items:
        if item.nodeid.split("[")[0] in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def demo_vlm_dir(tunelab_home: Path) -> Path:
    """The embedded demo VLM (tiny LLaVA), built once per session."""
    from tunelab.engine.vlm_demo import build_demo_vlm

    return build_demo_vlm()


@pytest.fixture(scope="session")
def vlm_adapter_dir(demo_vlm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA adapter on the demo VLM's language model, placed as `tunelab train` places it (apply_method), with
    seeded random non-zero weights so that its answers differ from the base model's. Training one takes minutes on
    these CPUs; training itself is covered by tests/test_demo_vlm.py and the browser test of the image flow."""
    import torch

    from tunelab.core.config import RunConfig
    from tunelab.engine.model import apply_method, load_model
    from tunelab.engine.vlm import load_processor

    config = RunConfig(model=str(demo_vlm_dir), dataset=["vlm_demo"], method="lora", lora_rank=8, precision="fp32")
    model = apply_method(load_model(config, str(demo_vlm_dir)), config)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    folder = tmp_path_factory.mktemp("vlm-adapter") / "adapter"
    model.save_pretrained(folder)
    load_processor(str(demo_vlm_dir)).save_pretrained(folder)
    return folder



@pytest.fixture(scope="session")
def vlm_answers(demo_vlm_dir: Path, vlm_adapter_dir: Path) -> dict[str, str]:
    """Greedy answers of plain transformers ('demo-vlm') and transformers + peft ('tuned') to VLM_PICTURE and
    VLM_QUESTION, rendered with the registry template: what every image path of tunelab must reproduce."""
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    from tunelab.core.template_choice import choose_template
    from tunelab.engine.vlm import generate_reply, load_processor

    processor, choice = load_processor(str(demo_vlm_dir)), choose_template("auto", "demo-vlm", demo_vlm_dir)
    messages = [{"role": "user", "content": f"<image>{VLM_QUESTION}"}]
    model = AutoModelForImageTextToText.from_pretrained(demo_vlm_dir).eval()
    base = generate_reply(model, processor, choice, messages, [str(VLM_PICTURE)], max_new_tokens=12)
    tuned_model = PeftModel.from_pretrained(model, str(vlm_adapter_dir)).eval()
    tuned = generate_reply(tuned_model, processor, choice, messages, [str(VLM_PICTURE)], max_new_tokens=12)
    assert base != tuned  # the adapter changes the answer, so matching it means the adapter was applied
    return {"demo-vlm": base, "tuned": tuned}
