"""The trainer process: ``python -m tunelab.engine.train RUN_DIR``.

Reads RUN_DIR/config.yaml, trains with trl's SFTTrainer (pre-tokenized rows, our masks), streams events,
saves checkpoints, the final adapter (PEFT) or model, and keeps status.json current. SIGTERM/SIGINT finish
the current step, save, and end the run as "aborted".
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import traceback
from pathlib import Path
from typing import Any

from tunelab.core.config import RunConfig
from tunelab.core.events import EventWriter
from tunelab.core.rundir import RunDir
from tunelab.core.template_choice import TemplateChoice, choose_template

log = logging.getLogger("tunelab.train")


def run(run_dir: str | Path) -> int:
    """Train the run in ``run_dir``; returns the process exit status (0 succeeded, 1 failed, 130 aborted)."""
    from tunelab.engine import dist
    from tunelab.engine.callbacks import StopRequest
    from tunelab.engine.jobproc import USER_ERRORS, setup_logging
    from tunelab.engine.jobproc import finish as _finish

    setup_logging()
    run_, writer = dist.for_rank(run_dir)
    stop = StopRequest()
    stop.install()
    try:
        run_.set_status("running")
        writer.write("status", state="running")
        summary = _train(run_, run_.config(), writer, stop)
        dist.finalize()
    except KeyboardInterrupt:
        return _finish(run_, writer, "aborted", f"stopped by {stop.signal_name or 'interrupt'} before training began")
    except USER_ERRORS as exc:
        message = str(exc).strip() or type(exc).__name__
        log.error("%s", message)
        return _finish(run_, writer, "failed", message)
    except Exception as exc:  # a bug or a crash: keep the traceback in train.log, a summary in status.json
        traceback.print_exc()
        return _finish(run_, writer, "failed", f"{type(exc).__name__}: {exc}".strip().splitlines()[0][:500])
    if stop.requested:
        return _finish(run_, writer, "aborted", f"stopped by {stop.signal_name}; checkpoint saved", **summary)
    return _finish(run_, writer, "succeeded", "training finished", **summary)


def _train(run_: RunDir, config: RunConfig, writer: EventWriter, stop: Any) -> dict[str, Any]:
    from tunelab.engine import dist
    from tunelab.engine.booster import BoosterChoice, apply_booster, choose_booster
    from tunelab.engine.data import prepare_data
    from tunelab.engine.model import apply_method, load_model, load_tokenizer, local_dir, resolve_model_path, trainable_summary

    dist.init(config)
    dist.record_pid(run_)
    dist.check_resume(config, run_.status())
    run_.set_status("running", world_size=dist.world_size(), strategy=config.strategy)
    with dist.main_first():  # rank 0 fetches or builds the model first; the other ranks find it ready
        path = resolve_model_path(config.model)
    tokenizer = load_tokenizer(path, config.trust_remote_code)
    choice = None
    if config.stage != "pt":
        choice = choose_template(config.template, config.model, local_dir(path))
        for warning in choice.warnings:
            log.warning("%s", warning)
        log.info("template: %s (%s)", choice.name, choice.reason)
        run_.set_status("running", template=choice.name, template_reason=choice.reason)
    with dist.main_first():  # rank 0 tokenizes and fills the cache; the other ranks read it
        data = prepare_data(config, tokenizer, choice)
    writer.write("data", **data.stats.as_event(), train_examples=len(data.train), eval_examples=len(data.eval or []))
    log.info("data: %s", data.stats.as_event())
    for refusal in data.stats.refusals:
        log.warning("template refused %s", refusal)

    model = load_model(config, path)
    booster = choose_booster(config, model)
    if dist.world_size() > 1 and config.booster == "auto":
        booster = BoosterChoice("none", dist.booster_note(config))
    model = apply_method(model, config, fast=booster.mode == "fast")
    booster = apply_booster(booster, model, config)
    log.info("booster: %s (%s)", booster.mode, booster.reason)
    run_.set_status("running", booster=booster.mode, booster_reason=booster.reason)
    params = trainable_summary(model)
    log.info("parameters: %s", params)
    trainer = _build_trainer(config, run_, model, tokenizer, data, writer, stop, booster.mode)
    checkpoint = run_.last_checkpoint() if config.resume else None
    if config.resume and checkpoint is None:
        log.warning("resume=true but %s holds no checkpoint: starting from scratch", run_.checkpoints)
    done = _steps_done(checkpoint)
    if checkpoint is not None and 0 < config.max_steps <= done:
        log.info("%s already reached max_steps=%d: nothing left to train", checkpoint.name, config.max_steps)
        return {"global_step": done, "total_steps": config.max_steps, **params}
    result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    if data.eval is not None and not stop.requested:
        trainer.evaluate()
    _save_final(config, run_, trainer, tokenizer, choice, base=path)
    return {
        "global_step": trainer.state.global_step,
        "total_steps": trainer.state.max_steps,
        "train_loss": round(float(result.training_loss), 6),
        **params,
    }


def _steps_done(checkpoint: Path | None) -> int:
    """The optimizer steps a checkpoint had completed (0 without one)."""
    if checkpoint is None:
        return 0
    import json

    state = checkpoint / "trainer_state.json"
    return int(json.loads(state.read_text()).get("global_step", 0)) if state.is_file() else 0


def _build_trainer(
    config: RunConfig, run_: RunDir, model: Any, tokenizer: Any, data: Any, writer: Any, stop: Any, booster: str = "none"
) -> Any:
    from trl import SFTConfig, SFTTrainer

    from tunelab.engine.callbacks import EventsCallback
    from tunelab.engine.dist import training_kwargs
    from tunelab.engine.model import compute_dtype

    import torch

    dtype = compute_dtype(config)
    if "tensorboard" in config.report_to:
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(run_.tb_dir)
    has_eval = data.eval is not None
    args = SFTConfig(
        output_dir=str(run_.checkpoints),
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
        optim=_optimizer(config, booster),
        use_liger_kernel=booster == "liger",
        seed=config.seed,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        gradient_checkpointing=False,  # applied by apply_method, the same way for every method
        neftune_noise_alpha=config.neftune_alpha,
        logging_steps=config.logging_steps,
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=(config.eval_steps or config.save_steps) if has_eval else None,
        report_to=list(config.report_to),
        include_num_input_tokens_seen="non_padding",
        disable_tqdm=True,
        max_length=config.cutoff_len,
        packing=config.packing,
        padding_free=config.packing,
        dataset_num_proc=None,
        remove_unused_columns=True,
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        save_only_model=False,
        **training_kwargs(config, run_),
    )
    optimizers = (None, None)
    if config.loraplus_lr_ratio and config.method in ("lora", "qlora"):
        from peft.optimizers import create_loraplus_optimizer

        optimizer = create_loraplus_optimizer(
            model, torch.optim.AdamW, lr=config.learning_rate, loraplus_lr_ratio=config.loraplus_lr_ratio,
            weight_decay=config.weight_decay,
        )
        optimizers = (optimizer, None)
    return SFTTrainer(
        model=model, args=args, train_dataset=data.train, eval_dataset=data.eval, processing_class=tokenizer,
        callbacks=[EventsCallback(writer, stop)], optimizers=optimizers,
    )


def _optimizer(config: RunConfig, booster: str) -> str:
    """The trl/transformers optimizer name: the fast path swaps AdamW for its fused kernel on a GPU."""
    import torch

    fused = booster == "fast" and config.fast_fused_optimizer and torch.cuda.is_available()
    return "adamw_torch_fused" if fused and config.optimizer == "adamw_torch" else config.optimizer


def _save_final(
    config: RunConfig, run_: RunDir, trainer: Any, tokenizer: Any, choice: TemplateChoice | None, base: str
) -> None:
    """Save the adapter (PEFT format) or full model, with the chat template, via a temp folder + rename.
    Several processes: every rank takes part in gathering the full state dict (FSDP2, ZeRO-3); rank 0 writes."""
    from tunelab.engine import dist

    adapter = config.method in ("lora", "qlora")
    target = run_.adapter_dir if adapter else run_.model_dir
    staging = target.with_name(f".{target.name}.tmp")
    if dist.is_main():
        shutil.rmtree(staging, ignore_errors=True)
    if dist.launched():
        trainer.save_model(str(staging))  # consolidated, standard HF/PEFT files, written by rank 0 only
        dist.barrier()
        if not dist.is_main():
            return
        (staging / "training_args.bin").unlink(missing_ok=True)
    else:
        trainer.model.save_pretrained(str(staging))
    if choice is not None:
        tokenizer.chat_template = choice.template.source
    tokenizer.save_pretrained(str(staging))
    if choice is not None:
        from tunelab.core.ollama import write_modelfile

        write_modelfile(staging, choice.template, base=base if adapter else ".", adapter="." if adapter else None)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    log.info("saved %s", target)


def main(argv: list[str] | None = None) -> int:
    """Entry point: python -m tunelab.engine.train RUN_DIR."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m tunelab.engine.train RUN_DIR", file=sys.stderr)
        return 2
    return run(argv[0])


if __name__ == "__main__":
    sys.exit(main())
