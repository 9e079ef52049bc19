"""Export of a vision-language model: the language-model adapter merged into the VLM, saved with its processor and
a chat template that takes image parts; plain transformers (AutoModelForImageTextToText + AutoProcessor) reloads it
and answers the picture as the unmerged model does; the export's own check ran on a prompt with a picture."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import VLM_PICTURE, VLM_QUESTION


@pytest.mark.slow
def test_vlm_export_reloads_in_plain_transformers_and_answers_the_picture(
    demo_vlm_dir: Path, vlm_adapter_dir: Path, vlm_answers: dict[str, str], tmp_path: Path,
) -> None:
    from PIL import Image
    from safetensors import safe_open
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from tunelab.core.export_config import ExportConfig
    from tunelab.engine.export import export_model

    out = tmp_path / "merged"
    report = export_model(ExportConfig(model="demo-vlm", adapter=str(vlm_adapter_dir), out=str(out)))
    verify = report["verify"]
    assert verify["passed"] and verify["template_ok"] and verify["tokens_match"], verify["summary"]
    assert verify["adapter_effect"] > 10 * verify["tolerance"]  # the image-prompt check can tell merged from unmerged
    assert json.loads((out / "tunelab_export.json").read_text())["verify"]["passed"]
    saved = [key for shard in out.glob("*.safetensors") for key in safe_open(str(shard), "pt").keys()]
    assert saved and not any("lora" in key for key in saved)  # merged: plain weights only
    model = AutoModelForImageTextToText.from_pretrained(out).eval()
    processor = AutoProcessor.from_pretrained(out)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": VLM_QUESTION}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[text], images=[Image.open(VLM_PICTURE).convert("RGB")], add_special_tokens=False, return_tensors="pt")
    generated = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    answer = processor.decode(generated[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    assert answer == vlm_answers["tuned"] != vlm_answers["demo-vlm"]


def test_vlm_export_refuses_gguf(vlm_adapter_dir: Path, tmp_path: Path) -> None:
    from tunelab.core.export_config import ExportConfig
    from tunelab.engine.export import ExportError, export_model

    with pytest.raises(ExportError, match="gguf: a vision-language model is not converted"):
        export_model(ExportConfig(model="demo-vlm", adapter=str(vlm_adapter_dir), out=str(tmp_path / "g"), gguf="q8_0"))
    assert not (tmp_path / "g").exists()
