"""The embedded demo VLM: a tiny LLaVA-architecture model built locally (no download), cached like the demo model.

Its language model is the text demo model (weights copied, plus one ``<image>`` token), its vision tower a 2-layer
CLIP encoder with random weights (32x32 pictures, 16 image tokens each), its projector random too. Why LLaVA and not
Qwen2.5-VL: transformers builds every Qwen-VL processor with a video processor, which needs torchvision; these CPU
machines have none (Qwen2.5-VL still trains through the same code on the GPU; see README).
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path

from tunelab.core.paths import home_dir

log = logging.getLogger(__name__)

DEMO_VLM_NAME = "demo-vlm"
DEMO_VLM_VERSION = 2  # 2: no tokenizer call state saved (v1 cut every prompt at 80 tokens)
IMAGE_SIZE = 32
PATCH = 8
VISION_SHAPE = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, image_size=IMAGE_SIZE,
    patch_size=PATCH, projection_dim=64,
)


def demo_vlm_dir() -> Path:
    """Where the demo VLM lives: $TUNELAB_HOME/models/demo-vlm-v<N>."""
    return home_dir() / "models" / f"{DEMO_VLM_NAME}-v{DEMO_VLM_VERSION}"


def build_demo_vlm(target: Path | None = None, force: bool = False) -> Path:
    """Build the demo VLM into ``target`` (default demo_vlm_dir()) unless it is already there."""
    target = Path(target or demo_vlm_dir())
    if (target / "config.json").is_file() and not force:
        return target
    import torch
    from transformers import (
        CLIPImageProcessorPil,
        LlamaForCausalLM,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    from tunelab.engine.demo import build_demo_model
    from tunelab.engine.export import portable_tokenizer_config

    text_dir = build_demo_model()
    tokenizer = PreTrainedTokenizerFast.from_pretrained(text_dir)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    text = LlamaForCausalLM.from_pretrained(text_dir, dtype=torch.float32)
    text_config = text.config.to_dict() | {"vocab_size": len(tokenizer)}
    config = LlavaConfig(
        text_config=text_config, vision_config=dict(model_type="clip_vision_model", **VISION_SHAPE),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"), vision_feature_layer=-1,
        vision_feature_select_strategy="default", tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config)
    _copy_language_model(model, text)
    model.generation_config = text.generation_config
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessorPil(
            size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        ),
        tokenizer=tokenizer, patch_size=PATCH, vision_feature_select_strategy="default", image_token="<image>",
        num_additional_image_tokens=1, chat_template=tokenizer.chat_template,
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".demo-vlm-", dir=target.parent))
    model.save_pretrained(staging)
    processor.save_pretrained(staging)
    portable_tokenizer_config(staging)  # without the call state transformers leaks into tokenizer_config.json
    info = {"name": DEMO_VLM_NAME, "version": DEMO_VLM_VERSION, "template": "chatml"}
    (staging / "tunelab.json").write_text(json.dumps(info))
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    log.info("built the demo VLM in %s", target)
    return target


def _copy_language_model(model, text) -> None:
    """Put the text demo's weights into the VLM's language model and head (the new <image> row stays random)."""
    import torch

    language = model.model.language_model
    with torch.no_grad():
        missing = language.load_state_dict(
            {k.removeprefix("model."): v for k, v in text.state_dict().items() if k.startswith("model.")
             and "embed_tokens" not in k}, strict=False,
        ).missing_keys
        if missing != ["embed_tokens.weight"]:
            raise RuntimeError(f"demo VLM: language-model weights missing after the copy: {missing}")
        rows = text.model.embed_tokens.weight.shape[0]
        language.embed_tokens.weight[:rows] = text.model.embed_tokens.weight
        model.lm_head.weight[:rows] = text.lm_head.weight
