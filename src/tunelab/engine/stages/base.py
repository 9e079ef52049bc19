"""What every stage shares: the trainer context, the common TrainingArguments, and pre-tokenized datasets."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from tunelab.core.config import RunConfig
from tunelab.core.rundir import RunDir
from tunelab.core.template_choice import TemplateChoice


@dataclass
class StageContext:
    """Everything a stage needs to build its trainer."""

    config: RunConfig
    run_: RunDir
    model: Any
    tokenizer: Any
    data: Any  # engine.data.PreparedData
    writer: Any
    stop: Any
    booster: str  # fast | liger | none
    choice: TemplateChoice | None
    path: str  # the resolved base model path

    def callbacks(self) -> list[Any]:
        """The callbacks every trainer gets: events and the clean stop."""
        from tunelab.engine.callbacks import EventsCallback

        return [EventsCallback(self.writer, self.stop)]


def training_args(ctx: StageContext, config_class: type, **stage_kwargs: Any) -> Any:
    """A trl config (any TrainingArguments subclass) with the fields every stage maps the same way."""
    import torch

    from tunelab.engine.model import compute_dtype

    config = ctx.config
    dtype = compute_dtype(config)
    if "tensorboard" in config.report_to:
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(ctx.run_.tb_dir)
    has_eval = ctx.data.eval is not None
    common: dict[str, Any] = dict(
        output_dir=str(ctx.run_.checkpoints),
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        num_train_epochs=config.num_epochs,
        max_steps=config.max_steps,
        lr_scheduler_type=config.lr_scheduler,
        warmup_steps=config.warmup_ratio,
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        optim=optimizer_name(config, ctx.booster),
        seed=config.seed,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        gradient_checkpointing=False,  # applied by apply_method, the same way for every method
        logging_steps=config.logging_steps,
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=(config.eval_steps or config.save_steps) if has_eval else None,
        report_to=list(config.report_to),
        include_num_input_tokens_seen="non_padding",
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        save_only_model=False,
    )
    from tunelab.engine.dist import training_kwargs

    common.update(training_kwargs(config, ctx.run_))  # several processes: ddp timeout, FSDP2 or DeepSpeed config
    common.update(stage_kwargs)
    return config_class(**common)


def optimizer_name(config: RunConfig, booster: str) -> str:
    """The trl/transformers optimizer name: the fast path swaps AdamW for its fused kernel on a GPU."""
    import torch

    fused = booster == "fast" and config.fast_fused_optimizer and torch.cuda.is_available()
    return "adamw_torch_fused" if fused and config.optimizer == "adamw_torch" else config.optimizer


def optimizers(ctx: StageContext) -> tuple[Any, Any]:
    """(optimizer, scheduler) for the trainer: LoRA+ builds its own optimizer, otherwise the trainer does."""
    config = ctx.config
    if config.loraplus_lr_ratio and config.method in ("lora", "qlora"):
        import torch
        from peft.optimizers import create_loraplus_optimizer

        optimizer = create_loraplus_optimizer(
            ctx.model, torch.optim.AdamW, lr=config.learning_rate, loraplus_lr_ratio=config.loraplus_lr_ratio,
            weight_decay=config.weight_decay,
        )
        return optimizer, None
    return None, None


def trainer_kwargs(ctx: StageContext) -> dict[str, Any]:
    """The keyword arguments every trl trainer takes alike."""
    return dict(
        model=ctx.model, train_dataset=ctx.data.train, eval_dataset=ctx.data.eval, processing_class=ctx.tokenizer,
        callbacks=ctx.callbacks(), optimizers=optimizers(ctx),
    )


class PreTokenized:
    """Mixin for trl trainers whose ``_prepare_dataset`` would tokenize again: rows that already carry token ids
    (tokenized by tunelab through the registry template, the exact string inference sends) pass through."""

    TOKENIZED_COLUMN = "prompt_ids"

    def _prepare_dataset(self, dataset: Any, *args: Any, **kwargs: Any) -> Any:
        if self.TOKENIZED_COLUMN in (dataset.column_names or []):
            return self._after_tokenized(dataset, *args, **kwargs)
        return super()._prepare_dataset(dataset, *args, **kwargs)  # type: ignore[misc]

    def _after_tokenized(self, dataset: Any, *args: Any, **kwargs: Any) -> Any:
        return dataset


def not_fast(stage: str) -> str:
    """The booster_blocker reason for stages whose trainers compute log-probabilities themselves."""
    return f"stage {stage!r} (trl computes its log-probabilities from the LM head itself; the fast path covers pt and sft)"
