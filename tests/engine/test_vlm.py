"""Vision-language sft on the tiny demo VLM: image tokens never carry loss, packing refuses images, which parts train."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunelab.core.config import RunConfig
from tunelab.core.datasets import DataError


@pytest.fixture(scope="module")
def vlm_dir(tunelab_home: Path) -> Path:
    from tunelab.engine.vlm_demo import build_demo_vlm

    return build_demo_vlm()


@pytest.fixture(scope="module")
def processor(vlm_dir: Path):
    from tunelab.engine.vlm import load_processor

    return load_processor(str(vlm_dir))


def _rows(vlm_dir: Path, processor, **overrides):
    from tunelab.core.template_choice import choose_template
    from tunelab.engine.data import load_reports, tokenize_reports

    config = RunConfig(model=str(vlm_dir), dataset=["vlm_demo"], max_samples=12, **overrides)
    return tokenize_reports(config, load_reports(config), processor, choose_template("auto", "demo-vlm", vlm_dir))


@pytest.mark.parametrize("train_on_prompt", [False, True])
def test_image_tokens_never_carry_loss(vlm_dir: Path, processor, train_on_prompt: bool) -> None:
    rows, stats = _rows(vlm_dir, processor, train_on_prompt=train_on_prompt)
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    assert stats.kept == 12 and len(rows) == 12
    for row in rows:
        positions = [i for i, token in enumerate(row["input_ids"]) if token == image_id]
        assert len(positions) == 16  # the processor expanded the one placeholder to the image's 16 patch tokens
        assert all(row["labels"][i] == -100 for i in positions)
        assert len(row["image_refs"]) == 1
        trained = processor.tokenizer.decode([t for t, label in zip(row["input_ids"], row["labels"]) if label != -100])
        if not train_on_prompt:
            assert trained.endswith("<|im_end|>") and "user" not in trained
            assert trained.removesuffix("<|im_end|>") in {"red", "green", "blue", "yellow", "circle", "square",
                                                           "triangle", "one", "two", "three"}


def test_packing_refuses_rows_with_images(vlm_dir: Path, processor) -> None:
    with pytest.raises(DataError, match="packing: rows with images cannot be packed"):
        _rows(vlm_dir, processor, packing=True)


def test_lora_trains_only_the_language_model_unless_asked(vlm_dir: Path) -> None:
    from tunelab.engine.model import apply_method, load_model
    from tunelab.engine.vlm import part_of

    def trainable_parts(**overrides) -> set[str]:
        config = RunConfig(model=str(vlm_dir), dataset=["vlm_demo"], **overrides)
        model = apply_method(load_model(config, str(vlm_dir)), config)
        return {part_of(name) for name, p in model.named_parameters() if p.requires_grad}

    assert trainable_parts() == {"language"}
    assert trainable_parts(train_projector=True) == {"language", "projector"}
    assert trainable_parts(train_vision_tower=True) == {"language", "vision"}
    assert trainable_parts(method="full") == {"language"}


def test_collator_batches_pixel_values(vlm_dir: Path, processor) -> None:
    from tunelab.engine.vlm import VisionCollator

    rows, _ = _rows(vlm_dir, processor)
    batch = VisionCollator(processor)(rows[:3])
    assert tuple(batch["pixel_values"].shape) == (3, 3, 32, 32)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    assert int((batch["input_ids"] == processor.tokenizer.convert_tokens_to_ids("<image>")).sum()) == 48


def test_long_rows_stay_whole(vlm_dir: Path, processor) -> None:
    """Tokenizer call state saved in a model folder (a max_length of 80 in demo VLM v1) must not cut rows: only
    cutoff_len does."""
    from tunelab.core.template_choice import choose_template
    from tunelab.engine.tokenize import EncodeStats
    from tunelab.engine.vlm import encode_vlm

    answer = " ".join(["red square and blue circle"] * 30)  # ~150 tokens
    conversation = [{"role": "user", "content": "<image>Describe it."}, {"role": "assistant", "content": answer}]
    picture = str(Path(__file__).resolve().parents[2] / "data" / "vlm_demo" / "test_000.png")
    [row] = encode_vlm(RunConfig(model=str(vlm_dir), dataset=["vlm_demo"], cutoff_len=1024), [conversation], [[picture]],
                       processor, choose_template("auto", "demo-vlm", vlm_dir), EncodeStats())
    trained = processor.tokenizer.decode([t for t, label in zip(row["input_ids"], row["labels"]) if label != -100])
    assert trained == answer + "<|im_end|>" and len(row["input_ids"]) > 150
