"""Gemma 3 (vision) through the VLM path on a tiny Gemma3ForConditionalGeneration built here with random weights
(no hub: the real checkpoints cannot be downloaded on this machine): its <start_of_image> placeholder expands to
the processor's soft tokens, which never carry loss; the collator hands the model token_type_ids so image tokens
attend to each other both ways in training as in inference; LoRA stays on the language model; `tunelab train`
lowers the loss and the merged export reloads in plain transformers with an image prompt checked."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tunelab.core.config import RunConfig

IMAGE_TOKENS = 4  # soft tokens per image (mm_tokens_per_image): 32x32 pictures, 8x8 patches pooled 2x2
NAMED = {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"}


@pytest.fixture(scope="module")
def gemma3_dir(tunelab_home: Path, tmp_path_factory) -> Path:
    import torch
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3ImageProcessorPil,
        Gemma3Processor,
        PreTrainedTokenizerFast,
    )

    from tests.tiny import tiny_tokenizer
    from tunelab.core.templates import registry

    target = tmp_path_factory.mktemp("tiny-gemma3")
    plain = tiny_tokenizer(["<start_of_turn>", "<end_of_turn>", *NAMED.values()], bos="<bos>", eos="<eos>",
                           chat_template=registry().get("gemma3").source)
    plain.save_pretrained(target)  # reloaded below with the named image tokens the Gemma 3 processor reads
    tokenizer = PreTrainedTokenizerFast.from_pretrained(target, model_specific_special_tokens=NAMED)
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in NAMED.items()}
    config = Gemma3Config(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=32, sliding_window=64,
                         max_position_embeddings=512),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        mm_tokens_per_image=IMAGE_TOKENS, boi_token_index=ids["boi_token"], eoi_token_index=ids["eoi_token"],
        image_token_index=ids["image_token"],
    )
    torch.manual_seed(0)
    Gemma3ForConditionalGeneration(config).save_pretrained(target)
    processor = Gemma3Processor(image_processor=Gemma3ImageProcessorPil(size={"height": 32, "width": 32}),
                                tokenizer=tokenizer, image_seq_length=IMAGE_TOKENS)
    processor.save_pretrained(target)
    return target


def _config(model: Path, **overrides) -> RunConfig:
    return RunConfig(model=str(model), dataset=["vlm_demo"], max_samples=8, cutoff_len=256,
                     **overrides)


def _rows(model: Path):
    from tunelab.core.template_choice import choose_template
    from tunelab.engine.data import load_reports, tokenize_reports
    from tunelab.engine.vlm import load_processor

    config, processor = _config(model), load_processor(str(model))
    rows, stats = tokenize_reports(config, load_reports(config), processor, choose_template("auto", str(model), model))
    return rows, stats, processor


def test_image_tokens_expand_and_never_carry_loss(gemma3_dir: Path) -> None:
    """`template: auto` recognises the model's chat template as gemma3; the answers alone carry loss."""
    rows, stats, processor = _rows(gemma3_dir)
    from tunelab.core.template_choice import choose_template

    assert choose_template("auto", str(gemma3_dir), gemma3_dir).template.name == "gemma3"  # its own chat template
    soft, boi = processor.tokenizer.image_token_id, processor.tokenizer.boi_token_id
    assert stats.kept == 8
    for row in rows:
        assert row["input_ids"].count(soft) == IMAGE_TOKENS and row["input_ids"].count(boi) == 1
        trained = [t for t, label in zip(row["input_ids"], row["labels"]) if label != -100]
        assert soft not in trained and boi not in trained
        answer = processor.tokenizer.decode(trained)
        assert answer.endswith("<end_of_turn>") and "user" not in answer and "<start_of_turn>" not in answer


def test_collator_marks_image_tokens_so_they_attend_both_ways(gemma3_dir: Path) -> None:
    import torch
    from transformers import Gemma3ForConditionalGeneration

    from tunelab.engine.vlm import VisionCollator

    rows, _, processor = _rows(gemma3_dir)
    batch = VisionCollator(processor)(rows[:2])
    types = batch["token_type_ids"]
    assert torch.equal(types.bool(), batch["input_ids"] == processor.tokenizer.image_token_id)
    model = Gemma3ForConditionalGeneration.from_pretrained(gemma3_dir).train()
    with torch.no_grad():
        marked = model(**batch).logits
        causal = model(**{key: value for key, value in batch.items() if key != "token_type_ids"}).logits
    change = (marked - causal).abs().amax(-1)
    first = int(types[0].argmax())  # the first image token: what comes before it sees the same thing either way
    assert float(change[0, :first].max()) == 0.0
    assert float(change[0, first : first + IMAGE_TOKENS - 1].min()) > 1e-3  # early image tokens now see later ones


def test_lora_stays_on_the_language_model(gemma3_dir: Path) -> None:
    from tunelab.engine.model import apply_method, load_model
    from tunelab.engine.vlm import part_of

    def trainable(**overrides) -> set[str]:
        config = _config(gemma3_dir, **overrides)
        model = apply_method(load_model(config, str(gemma3_dir)), config)
        return {part_of(name) for name, p in model.named_parameters() if p.requires_grad}

    assert trainable() == {"language"}
    assert trainable(train_projector=True) == {"language", "projector"}
    assert trainable(train_vision_tower=True) == {"language", "vision"}


@pytest.mark.slow
def test_train_then_export_reloads_in_plain_transformers(gemma3_dir: Path, tmp_path: Path) -> None:
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from tests.conftest import VLM_PICTURE
    from tunelab.core.export_config import ExportConfig
    from tunelab.engine.export import export_model

    run = tmp_path / "run"
    config = dict(model=str(gemma3_dir), method="lora", lora_rank=8, train_projector=True,
                  dataset=["vlm_demo"], max_samples=16, cutoff_len=256, learning_rate=0.004, max_steps=4,
                  batch_size=4, seed=0, report_to=[], output_dir=str(run))
    (tmp_path / "run.yaml").write_text(json.dumps(config))
    done = subprocess.run([sys.executable, "-m", "tunelab.cli", "train", str(tmp_path / "run.yaml")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    losses = [e["loss"] for e in map(json.loads, (run / "events.jsonl").read_text().splitlines()) if "loss" in e]
    assert len(losses) == 4 and losses[-1] < losses[0]
    out = tmp_path / "merged"
    report = export_model(ExportConfig(model=str(gemma3_dir), adapter=str(run / "adapter"), out=str(out)))
    assert report["verify"]["passed"], report["verify"]["summary"]
    model = AutoModelForImageTextToText.from_pretrained(out).eval()
    processor = AutoProcessor.from_pretrained(out)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is it?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text.startswith("<bos><start_of_turn>user\n") and text.endswith("<start_of_turn>model\n")
    inputs = processor(text=[text], images=[Image.open(VLM_PICTURE).convert("RGB")], add_special_tokens=False,
                       return_tensors="pt")
    assert int(inputs["token_type_ids"].sum()) == IMAGE_TOKENS
    generated = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert generated.shape[1] > inputs["input_ids"].shape[1]
