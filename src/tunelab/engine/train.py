"""The trainer process: ``python -m tunelab.engine.train RUN_DIR``.

Reads RUN_DIR/config.yaml, looks up the run's stage (engine/stages/<stage>.py: its encoding and its trl trainer),
streams events, saves checkpoints, the final adapter (PEFT) or model, and keeps status.json current. SIGTERM/SIGINT finish
the current step, save, and end the run as "aborted".
"""

from __future__ import annotations

import logging
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
    from tunelab.engine.callbacks import StopRequest
    from tunelab.engine.jobproc import USER_ERRORS, setup_logging
    from tunelab.engine.jobproc import finish as _finish

    setup_logging()
    run_ = RunDir(run_dir)
    stop = StopRequest()
    stop.install()
    writer = EventWriter(run_.events_file)
    try:
        run_.set_status("running")
        writer.write("status", state="running")
        summary = _train(run_, run_.config(), writer, stop)
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
    from tunelab.core.stages import stage_info
    from tunelab.engine.booster import apply_booster, choose_booster
    from tunelab.engine.data import prepare_data
    from tunelab.engine.model import apply_method, load_model, load_tokenizer, local_dir, resolve_model_path, trainable_summary
    from tunelab.engine.stages import get_stage
    from tunelab.engine.stages.base import StageContext

    stage = get_stage(config.stage)
    log.info("stage: %s (%s)", config.stage, stage_info(config.stage).title)
    path = resolve_model_path(config.model)
    from tunelab.engine.vlm import is_vlm, load_processor

    vlm = is_vlm(path, config.trust_remote_code)  # a VLM's processor stands in for the tokenizer throughout
    tokenizer = load_processor(path, config.trust_remote_code) if vlm else load_tokenizer(path, config.trust_remote_code)
    choice = None
    if stage_info(config.stage).template:
        choice = choose_template(config.template, config.model, local_dir(path))
        for warning in choice.warnings:
            log.warning("%s", warning)
        log.info("template: %s (%s)", choice.name, choice.reason)
        run_.set_status("running", template=choice.name, template_reason=choice.reason)
    data = prepare_data(config, tokenizer, choice)
    writer.write("data", **data.stats.as_event(), train_examples=len(data.train), eval_examples=len(data.eval or []))
    log.info("data: %s", data.stats.as_event())
    for refusal in data.stats.refusals:
        log.warning("template refused %s", refusal)

    import transformers

    transformers.set_seed(config.seed)  # before any adapter or head is initialised: same seed, same run
    model = getattr(stage, "load_model", load_model)(config, path)
    booster = choose_booster(config, model, stage.booster_blocker(config))
    model = apply_method(model, config, fast=booster.mode == "fast")
    booster = apply_booster(booster, model, config)
    log.info("booster: %s (%s)", booster.mode, booster.reason)
    run_.set_status("running", booster=booster.mode, booster_reason=booster.reason)
    params = trainable_summary(model)
    log.info("parameters: %s", params)
    ctx = StageContext(config, run_, model, tokenizer, data, writer, stop, booster.mode, choice, path)
    trainer = stage.build_trainer(ctx)
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


def _save_final(
    config: RunConfig, run_: RunDir, trainer: Any, tokenizer: Any, choice: TemplateChoice | None, base: str
) -> None:
    """Save the adapter (PEFT format) or full model, with the chat template, via a temp folder + rename."""
    adapter = config.method in ("lora", "qlora")
    target = run_.adapter_dir if adapter else run_.model_dir
    staging = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
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
