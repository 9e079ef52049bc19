"""Stage sft: supervised fine-tuning on conversations, loss on the assistant replies (trl's SFTTrainer)."""

from __future__ import annotations

from typing import Any

from tunelab.core.config import RunConfig
from tunelab.core.datasets import DataError
from tunelab.core.template_choice import TemplateChoice
from tunelab.engine.stages.base import StageContext, trainer_kwargs, training_args
from tunelab.engine.tokenize import EncodeStats, encode_conversations
from tunelab.engine.vlm import VisionCollator, encode_vlm, is_processor

STREAMS = True  # rows are token ids alone: engine.data tokenizes them in chunks, in several processes

def with_system(messages: list[dict], system: str | None) -> list[dict]:
    """The conversation with ``system`` as its system prompt when it has none."""
    if system and (not messages or messages[0]["role"] != "system"):
        return [{"role": "system", "content": system}, *messages]
    return messages


def encode(
    config: RunConfig, examples: list[dict], tokenizer: Any, choice: TemplateChoice | None, stats: EncodeStats
) -> list[dict]:
    """Conversations -> input_ids + labels (loss on the template's generation spans)."""
    assert choice is not None
    conversations = [with_system(e["messages"], config.system_prompt) for e in examples]
    images = [e.get("images") or [] for e in examples]
    if is_processor(tokenizer):
        return encode_vlm(config, conversations, images, tokenizer, choice, stats)
    if any(images):
        raise DataError(f"dataset: rows with images need a vision-language model; model {config.model!r} is text-only")
    return encode_conversations(
        tokenizer, choice.template, conversations, cutoff_len=config.cutoff_len, entry=choice.entry,
        train_on_prompt=config.train_on_prompt, mask_history=config.mask_history, stats=stats,
        tools=[e.get("tools") for e in examples],
    )


def booster_blocker(config: RunConfig) -> str | None:
    """SFT runs on the fast path."""
    return None


def sft_trainer(ctx: StageContext) -> Any:
    """trl's SFTTrainer over pre-tokenized rows (shared by pt and sft), with less host work per step (lean.py)."""
    from trl import SFTConfig, SFTTrainer

    from tunelab.engine.stages.lean import lean

    config = ctx.config
    vision: dict[str, Any] = {}
    if is_processor(ctx.tokenizer):  # rows carry image refs: our collator makes the pixel values, trl keeps the rows
        vision = dict(remove_unused_columns=False, dataset_kwargs={"skip_prepare_dataset": True})
    args = training_args(
        ctx, SFTConfig, use_liger_kernel=ctx.booster == "liger", neftune_noise_alpha=config.neftune_alpha,
        max_length=config.cutoff_len, packing=config.packing, padding_free=config.packing, dataset_num_proc=None,
        logging_nan_inf_filter=False,  # its check syncs the host with the GPU at every step; a nan loss is logged as none
        **({"remove_unused_columns": True} | vision),
    )
    collator = {"data_collator": VisionCollator(ctx.tokenizer)} if vision else {}
    return lean(SFTTrainer)(args=args, **collator, **trainer_kwargs(ctx))


build_trainer = sft_trainer
