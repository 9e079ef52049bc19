"""The image demo end to end: `tunelab train examples/demo_cpu_vlm_lora.yaml`, then exact-match answers on the
held-out pictures (vlm_demo_test, never trained on) against the untrained base."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _exact_match(model, processor, choice, examples) -> float:
    from tunelab.engine.vlm import generate_reply

    hits = sum(
        generate_reply(model, processor, choice, e["messages"][:-1], e["images"], max_new_tokens=6)
        == e["messages"][-1]["content"]
        for e in examples
    )
    return hits / len(examples)


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_vlm_lora_example_improves_held_out_exact_match(tunelab_home: Path, tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    from tunelab.core.datasets import load_dataset_registry, validate_file
    from tunelab.core.template_choice import choose_template
    from tunelab.engine.vlm import load_processor
    from tunelab.engine.vlm_demo import build_demo_vlm

    run_dir = tmp_path / "run"
    subprocess.run(
        [sys.executable, "-m", "tunelab.cli", "train", str(ROOT / "examples" / "demo_cpu_vlm_lora.yaml"),
         f"output_dir={run_dir}"], check=True, capture_output=True, text=True, timeout=900,
    )
    path = build_demo_vlm()
    processor, choice = load_processor(str(path)), choose_template("auto", "demo-vlm", path)
    examples = validate_file(*load_dataset_registry().resolve("vlm_demo_test")).examples
    base = AutoModelForImageTextToText.from_pretrained(path).eval()
    before = _exact_match(base, processor, choice, examples)
    tuned = PeftModel.from_pretrained(base, str(run_dir / "adapter")).eval()
    after = _exact_match(tuned, processor, choice, examples)
    print(f"held-out exact match: base {before:.3f} -> tuned {after:.3f}")
    assert after >= before + 0.05, (before, after)
