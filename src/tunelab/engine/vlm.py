"""Vision-language models: loading with AutoProcessor, which parts train, tokenization with images, collation.

A VLM's processor stands in for the tokenizer everywhere in a run (it is what trl's trainers and save_pretrained
take). Images stay file/data-URL references in the tokenized rows; the collator turns them into pixel values.
"""

from __future__ import annotations

import difflib
import json
import logging
from pathlib import Path
from typing import Any

from tunelab.core.chat_render import TemplateRefusal
from tunelab.core.config import ConfigError, RunConfig
from tunelab.core.datasets import DataError
from tunelab.core.media import IMAGE_PLACEHOLDER, load_image
from tunelab.core.template_choice import TemplateChoice
from tunelab.engine.tokenize import (
    IGNORE,
    EncodeStats,
    _encode_at_last_reply,
    _straddles,
    labels_for,
    render_with_spans,
)

log = logging.getLogger(__name__)

# Module-name pieces of each part, across the families (LLaVA, Gemma 3: vision_tower + multi_modal_projector;
# Qwen2/2.5/3-VL: visual with its merger(s) as the projector).
VISION_PARTS = ("vision_tower", "visual", "vision_model")
PROJECTOR_PARTS = ("multi_modal_projector", "visual.merger", "visual.deepstack_merger_list")
QWEN_IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
# Tokenizer call state that transformers 5 saves into tokenizer_config.json; a processor applies it to every call
# (a saved max_length of 80 silently cut every longer prompt), so it is dropped on load. Cutting is cutoff_len's job.
CALL_STATE = ("max_length", "truncation", "truncation_strategy", "stride", "pad_to_multiple_of")


def is_vlm(path: str, trust_remote_code: bool = False) -> bool:
    """Whether the model at ``path`` (folder or hub id) is a vision-language model (its config has a vision part)."""
    config_file = Path(path) / "config.json"
    if config_file.is_file():
        config = json.loads(config_file.read_text())
        return "vision_config" in config
    try:
        from transformers import AutoConfig

        return hasattr(AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code), "vision_config")
    except Exception:  # offline or unknown: load_tokenizer reports it plainly
        return False


def is_processor(obj: Any) -> bool:
    """Whether ``obj`` is a multimodal processor (not a plain tokenizer)."""
    return hasattr(obj, "image_processor") and hasattr(obj, "tokenizer")


def text_tokenizer(obj: Any) -> Any:
    """The tokenizer of a processor, or the tokenizer itself."""
    return obj.tokenizer if is_processor(obj) else obj


def load_processor(path: str, trust_remote_code: bool = False) -> Any:
    """AutoProcessor for a VLM, with a pad token."""
    from transformers import AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, ImportError) as exc:
        raise ConfigError(f"model: the processor of {path!r} could not be loaded ({' '.join(str(exc).split())[:300]})") from None
    if processor.tokenizer.pad_token is None:
        processor.tokenizer.pad_token = processor.tokenizer.eos_token
    for key in CALL_STATE:  # saved call state (transformers 5 leaks it) would become the processor's defaults
        processor.tokenizer.init_kwargs.pop(key, None)
    return processor


def image_text(processor: Any) -> str:
    """What stands for one image in the rendered prompt, before the processor expands it."""
    boi = getattr(processor, "boi_token", None)
    if boi:  # Gemma 3
        return boi
    token = getattr(processor, "image_token", None) or IMAGE_PLACEHOLDER
    return QWEN_IMAGE if token == "<|image_pad|>" else token


def image_token_ids(processor: Any) -> set[int]:
    """Token ids that belong to images (never trained on)."""
    tokenizer = processor.tokenizer
    texts = [image_text(processor), getattr(processor, "image_token", "") or ""]
    ids = {i for text in texts if text for i in tokenizer(text, add_special_tokens=False)["input_ids"]}
    for name in ("image_token_id", "boi_token_id", "eoi_token_id"):
        value = getattr(processor, name, None)
        if isinstance(value, int):
            ids.add(value)
    return ids


def encode_vlm(
    config: RunConfig, conversations: list[list[dict]], images: list[list[str]], processor: Any,
    choice: TemplateChoice, stats: EncodeStats,
) -> list[dict]:
    """Conversations with images -> rows of expanded input_ids, labels (assistant text only) and image refs."""
    if config.packing and any(images):
        raise DataError("packing: rows with images cannot be packed (each row's image tokens must stay whole); "
                        "set packing=false for this dataset")
    placeholder, masked = image_text(processor), image_token_ids(processor)
    rows = []
    for number, (messages, refs) in enumerate(zip(conversations, images), 1):
        stats.examples += 1
        messages = [{**m, "content": m["content"].replace(IMAGE_PLACEHOLDER, placeholder)} for m in messages]
        try:
            rendered = render_with_spans(choice.template, messages, choice.entry)
        except TemplateRefusal as exc:
            stats.dropped_refused += 1
            if len(stats.refusals) < 5:
                stats.refusals.append(f"example {number}: {exc}")
            continue
        row = _encode_one(config, rendered, refs, processor, masked, stats)
        if row is not None:
            rows.append(row)
    return rows


def _encode_one(config: RunConfig, rendered: Any, refs: list[str], processor: Any, masked: set[int], stats: EncodeStats) -> dict | None:
    tokenizer = processor.tokenizer
    piece = tokenizer(rendered.text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(piece["input_ids"]), list(piece["offset_mapping"])
    cut = len(rendered.text)  # the text before ``cut`` is tokenized whole, as the processor does
    if rendered.spans and _straddles(offsets, rendered.spans[-1][0]):
        ids, offsets = _encode_at_last_reply(tokenizer, rendered)  # the last reply apart, as inference sees it
        cut = rendered.spans[-1][0]
    spans = rendered.spans[-1:] if config.mask_history else rendered.spans
    labels = list(ids) if config.train_on_prompt else labels_for(offsets, spans, ids)
    expanded = list(ids)
    if refs:
        if rendered.text[cut:].count(image_text(processor)):
            raise DataError("an image in the last assistant reply cannot be trained on; put images in user turns")
        pictures = [load_image(ref) for ref in refs]
        head = sum(1 for start, _ in offsets if start < cut)
        prompt = list(processor(text=[rendered.text[:cut]], images=pictures, add_special_tokens=False)["input_ids"][0])
        labels = _align(ids[:head], labels[:head], prompt) + labels[head:]
        expanded = prompt + ids[head:]
    labels = [IGNORE if token in masked else label for token, label in zip(expanded, labels)]
    if len(expanded) > config.cutoff_len:
        if any(token in masked for token in expanded[config.cutoff_len:]):
            stats.dropped_too_long += 1
            return None
        expanded, labels = expanded[: config.cutoff_len], labels[: config.cutoff_len]
        stats.truncated += 1
    if all(label == IGNORE for label in labels):
        stats.dropped_no_loss += 1
        return None
    stats.kept += 1
    stats.tokens += len(expanded)
    stats.trained_tokens += sum(label != IGNORE for label in labels)
    return {"input_ids": expanded, "labels": labels, "image_refs": list(refs)}


def _align(ids: list[int], labels: list[int], expanded: list[int]) -> list[int]:
    """Carry labels over to the processor's expanded ids: tokens it inserted (image tokens) get IGNORE."""
    out = [IGNORE] * len(expanded)
    matcher = difflib.SequenceMatcher(a=ids, b=expanded, autojunk=False)
    for a, b, size in matcher.get_matching_blocks():
        out[b : b + size] = labels[a : a + size]
    if sum(label != IGNORE for label in out) != sum(label != IGNORE for label in labels):
        raise DataError("the processor changed assistant tokens while expanding images; report this model")
    return out


class VisionCollator:
    """Pad token rows and turn their image refs into the processor's pixel inputs (pixel_values, grids, sizes)."""

    def __init__(self, processor: Any) -> None:
        self.processor = processor
        self.pad_id = processor.tokenizer.pad_token_id
        # Processors that mark which tokens are image tokens: Qwen-VL (mm_token_type_ids; its 3D M-RoPE positions
        # come from them, else image tokens get text positions) and Gemma 3 (token_type_ids; image tokens attend to
        # each other both ways, else they train causally while inference sees them bidirectionally).
        probe = processor(text=["a"], add_special_tokens=False)
        self.types_key = next((key for key in ("mm_token_type_ids", "token_type_ids") if key in probe), None)

    def __call__(self, features: list[dict]) -> dict[str, Any]:
        import torch

        length = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), length), self.pad_id, dtype=torch.long)
        labels = torch.full((len(features), length), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(features), length), dtype=torch.long)
        for row, feature in enumerate(features):
            n = len(feature["input_ids"])
            ids[row, :n] = torch.tensor(feature["input_ids"])
            labels[row, :n] = torch.tensor(feature["labels"])
            mask[row, :n] = 1
        batch: dict[str, Any] = {"input_ids": ids, "attention_mask": mask, "labels": labels}
        refs = [ref for feature in features for ref in (feature.get("image_refs") or [])]
        if refs:
            pixels = self.processor.image_processor([load_image(ref) for ref in refs], return_tensors="pt")
            batch.update(dict(pixels))
        if self.types_key:
            types = self.processor.create_mm_token_type_ids(ids.tolist())
            batch[self.types_key] = torch.tensor(types, dtype=torch.long) * mask
        return batch


def part_of(name: str) -> str:
    """'projector', 'vision' or 'language' for a parameter/module name of a VLM."""
    if any(p in name for p in PROJECTOR_PARTS):
        return "projector"
    if any(f"{p}." in name or name.endswith(p) for p in VISION_PARTS):
        return "vision"
    return "language"


def is_vlm_model(model: Any) -> bool:
    """Whether a loaded model has a vision part."""
    return hasattr(model.config, "vision_config")


def lora_target_regex(model: Any, config: RunConfig) -> str:
    """peft target_modules (a full-match regex) for LoRA on a VLM: the language model's linear layers, plus the vision
    tower's when ``train_vision_tower``; the projector trains fully instead (modules_to_save) when asked."""
    import torch

    wanted = None if config.lora_target.strip() == "all" else {n.strip() for n in config.lora_target.split(",") if n.strip()}
    parts = {"language", "vision"} if config.train_vision_tower else {"language"}
    names = [
        name for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and part_of(name) in parts and "lm_head" not in name
        and (wanted is None or name.rsplit(".", 1)[-1] in wanted)
    ]
    if not names:
        raise ConfigError(f"lora_target: {config.lora_target!r} matches no linear layer of this model's language model")
    return "|".join(sorted({_escape(name) for name in names}))


def _escape(name: str) -> str:
    import re

    return re.escape(name)


def projector_modules(model: Any) -> list[str]:
    """Top-level names of the projector modules (for peft modules_to_save)."""
    found = []
    for name, _ in model.named_modules():
        if part_of(name) == "projector" and not any(name.startswith(f + ".") for f in found):
            found.append(name)
    return found


def freeze_parts(model: Any, config: RunConfig) -> None:
    """Full/freeze methods: the vision tower and projector stay frozen unless asked to train."""
    keep = {"language"} | ({"vision"} if config.train_vision_tower else set()) | ({"projector"} if config.train_projector else set())
    for name, param in model.named_parameters():
        if part_of(name) not in keep:
            param.requires_grad = False
    log.info("vlm: training %s", ", ".join(sorted(keep)))


def generate_reply(model: Any, processor: Any, choice: TemplateChoice, messages: list[dict], images: list[str],
                   max_new_tokens: int = 16) -> str:
    """Greedy reply of a VLM to a conversation whose text holds one ``<image>`` per image ref (for checks and chat)."""
    import torch

    placeholder = image_text(processor)
    messages = [{**m, "content": m["content"].replace(IMAGE_PLACEHOLDER, placeholder)} for m in messages]
    prompt = choice.template.render(messages, add_generation_prompt=True, model=choice.entry).text
    pictures = [load_image(ref) for ref in images] or None
    inputs = processor(text=[prompt], images=pictures, add_special_tokens=False, return_tensors="pt")
    eos = [i for i in {processor.tokenizer.eos_token_id, *processor.tokenizer.convert_tokens_to_ids(choice.stop_strings)}
           if isinstance(i, int) and i != processor.tokenizer.unk_token_id]
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos,
                             pad_token_id=processor.tokenizer.pad_token_id)
    return processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
