"""The trainer process: ``python -m tunelab.engine.train RUN_DIR``.

Reads RUN_DIR/config.yaml, looks up the run's stage (engine/stages/<stage>.py: its encoding and its trl trainer),
streams events, saves checkpoints, the final adapter (PEFT) or model, and keeps status.json current. SIGTERM/SIGINT finish
the current step, save, and end the run as "aborted".
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any, MutableMapping

from tunelab.core.config import ConfigError, RunConfig
from tunelab.core.events import EventWriter
from tunelab.core.rundir import RunDir
from tunelab.core.stages import stage_info
from tunelab.core.template_choice import TemplateChoice, choose_template

log = logging.getLogger("tunelab.train")
PREPARE_LOG = {  # what train.log says at each ``prepare`` stage (the UI shows the same, translated)
    "libraries": "loading torch, transformers, peft and trl", "demo": "building the demo model (pre-training steps)",
    "tokenizer": "loading the tokenizer", "data": "validating and tokenizing the data", "model": "loading the model",
    "trainer": "starting the trainer", "steps": "training: the first loss is logged after logging_steps steps",
    "evaluate": "evaluating on the validation split", "save": "saving the final weights",
}


def run(run_dir: str | Path) -> int:
    """Train the run in ``run_dir``; returns the process exit status (0 succeeded, 1 failed, 130 aborted)."""
    from tunelab.engine import dist
    from tunelab.engine.jobproc import USER_ERRORS, setup_logging
    from tunelab.engine.jobproc import finish as _finish

    setup_logging()
    run_, writer = dist.for_rank(run_dir)
    run_.set_status("running")
    writer.write("status", state="running")
    prepare(writer, "libraries")  # torch, transformers, peft, trl: the first seconds of every run
    _skip_bitsandbytes(run_)
    from tunelab.engine.callbacks import StopRequest

    stop = StopRequest()
    stop.install()
    try:
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
        where = [f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in traceback.extract_tb(exc.__traceback__)[-4:]]
        return _finish(run_, writer, "failed", f"{type(exc).__name__}: {exc}".strip().splitlines()[0][:500], where=where)
    if stop.requested:
        return _finish(run_, writer, "aborted", f"stopped by {stop.signal_name}; checkpoint saved", **summary)
    return _finish(run_, writer, "succeeded", "training finished", **summary)


def _train(run_: RunDir, config: RunConfig, writer: EventWriter, stop: Any) -> dict[str, Any]:
    from tunelab.engine import dist
    from tunelab.engine.booster import BoosterChoice, apply_booster, choose_booster
    from tunelab.engine.data import prepare_data
    from tunelab.engine.model import (
        apply_method, load_model, load_tokenizer, local_dir, resolve_model_path, set_cpu_threads, trainable_summary,
    )
    from tunelab.engine.stages import get_stage
    from tunelab.engine.stages.base import StageContext

    dist.init(config)
    dist.record_pid(run_)
    dist.check_resume(config, run_.status())
    run_.set_status("running", world_size=dist.world_size(), strategy=config.strategy)
    stage = get_stage(config.stage)
    log.info("stage: %s (%s)", config.stage, stage_info(config.stage).title)
    with dist.main_first():  # rank 0 fetches or builds the model first; the other ranks find it ready
        path = resolve_model_path(config.model, progress=lambda done, total: prepare(writer, "demo", done=done, total=total))
    prepare(writer, "tokenizer", model=config.model)
    from tunelab.engine.vlm import is_vlm, load_processor

    vlm = is_vlm(path, config.trust_remote_code)  # a VLM's processor stands in for the tokenizer throughout
    if vlm and config.stage != "sft":
        raise ConfigError(f"stage: {config.stage!r} does not take a vision-language model yet; valid choice for one: sft")
    tokenizer = load_processor(path, config.trust_remote_code) if vlm else load_tokenizer(path, config.trust_remote_code)
    choice = None
    if stage_info(config.stage).template:
        choice = choose_template(config.template, config.model, local_dir(path))
        for warning in choice.warnings:
            log.warning("%s", warning)
        log.info("template: %s (%s)", choice.name, choice.reason)
        run_.set_status("running", template=choice.name, template_reason=choice.reason)
    prepare(writer, "data", datasets=list(config.dataset))
    with dist.main_first():  # rank 0 tokenizes and fills the cache; the other ranks read it
        data = prepare_data(config, tokenizer, choice, progress=prepare_progress(writer))
    writer.write("data", **data.stats.as_event(), train_examples=len(data.train), eval_examples=len(data.eval or []))
    log.info("data: %s", data.stats.as_event())
    for refusal in data.stats.refusals:
        log.warning("template refused %s", refusal)
    from tunelab.engine.estimate_event import record_estimate

    record_estimate(run_, writer, config, path, data.stats)  # before loading: an out-of-memory run keeps it

    import transformers

    transformers.set_seed(config.seed)  # before any adapter or head is initialised: same seed, same run
    prepare(writer, "model", model=config.model, method=config.method)
    model = getattr(stage, "load_model", load_model)(config, path)
    if set_cpu_threads(model):
        log.info("CPU: a model under 100M parameters trains on 1 torch thread (set OMP_NUM_THREADS to choose)")
    booster = choose_booster(config, model, stage.booster_blocker(config))
    if dist.world_size() > 1 and config.booster == "auto":
        booster = BoosterChoice("none", dist.booster_note(config))
    model = apply_method(model, config, fast=booster.mode == "fast")
    booster = apply_booster(booster, model, config)
    log.info("booster: %s (%s)", booster.mode, booster.reason)
    run_.set_status("running", booster=booster.mode, booster_reason=booster.reason)
    params = trainable_summary(model)
    log.info("parameters: %s", params)
    prepare(writer, "trainer", trainer=config.stage)
    ctx = StageContext(config, run_, model, tokenizer, data, writer, stop, booster.mode, choice, path)
    trainer = stage.build_trainer(ctx)
    if dist.launched():
        fsdp = getattr(trainer.accelerator.state.fsdp_plugin, "fsdp_version", None) if trainer.is_fsdp_enabled else None
        log.info("strategy %s: %d processes, fsdp=%s (version %s) deepspeed=%s", config.strategy, dist.world_size(),
                 trainer.is_fsdp_enabled, fsdp, trainer.is_deepspeed_enabled)
    checkpoint = run_.last_checkpoint() if config.resume else None
    if config.resume and checkpoint is None:
        log.warning("resume=true but %s holds no checkpoint: starting from scratch", run_.checkpoints)
    done = _steps_done(checkpoint)
    if checkpoint is not None and 0 < config.max_steps <= done:
        log.info("%s already reached max_steps=%d: nothing left to train", checkpoint.name, config.max_steps)
        return {"global_step": done, "total_steps": config.max_steps, **params}
    prepare(writer, "steps", logging_steps=config.logging_steps)  # until the first loss is logged
    run_.set_status("running", train_started_at=time.time(), train_finished_at=None)  # duration: training only
    result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    run_.set_status("running", train_finished_at=time.time())
    if data.eval is not None and not stop.requested and not _evaluated_last(trainer.state):
        prepare(writer, "evaluate", examples=len(data.eval))
        trainer.evaluate()
    prepare(writer, "save", method=config.method)
    _save_final(config, run_, trainer, tokenizer, choice, base=path)
    return {
        "global_step": trainer.state.global_step,
        "total_steps": trainer.state.max_steps,
        "train_loss": round(float(result.training_loss), 6),
        **params,
    }


def _skip_bitsandbytes(run_: RunDir) -> None:
    """Keep bitsandbytes out of a run that neither quantizes nor uses an 8-bit or paged optimizer: peft would import
    it (and torch's compiler with it) for nothing: ~0.7 CPU seconds and a kernel-loading warning in train.log."""
    try:
        config = run_.config()
    except Exception:  # reported where training reads the config
        return
    if config.quantization == "none" and not any(word in config.optimizer for word in ("8bit", "paged")):
        sys.modules.setdefault("bitsandbytes", None)  # type: ignore[assignment]  # find_spec() then says: not installed


def prepare(writer: EventWriter, stage: str, **fields: Any) -> None:
    """A ``prepare`` event: the step the trainer is in before (or after) training, with its CPU seconds so far."""
    writer.write("prepare", stage=stage, cpu_s=round(time.process_time(), 2), **fields)
    log.info("%s %s", PREPARE_LOG.get(stage, stage), " ".join(f"{k}={v}" for k, v in fields.items()))


def prepare_progress(writer: EventWriter) -> Any:
    """The progress hook of data preparation: a ``prepare`` event and a log line per report."""

    def report(done: int, total: int) -> None:
        writer.write("prepare", stage="tokenize", done=done, total=total)
        log.info("tokenize: %d/%d examples", done, total)

    return report


def _evaluated_last(state: Any) -> bool:
    """Whether the trainer already evaluated at its final step (no second identical eval event)."""
    return any("eval_loss" in entry and entry.get("step") == state.global_step for entry in state.log_history)


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
    if choice is not None and stage_info(config.stage).chat:  # a reward model is not served for chat
        from tunelab.core.ollama import write_modelfile

        write_modelfile(staging, choice.template, base=base if adapter else ".", adapter="." if adapter else None)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    log.info("saved %s", target)


def allocator_defaults(env: MutableMapping[str, str] | None = None) -> None:
    """Before torch touches the GPU: expandable segments, so that the CUDA allocator grows mapped segments instead of
    caching fixed blocks and what it reserves (what nvidia-smi and an out-of-memory error see) stays near what is
    allocated; batches whose token count changes every step otherwise fragment it (8B LoRA on the fast path: 16.3
    GiB allocated, 18.9 reserved). Single-process runs only; a PYTORCH_CUDA_ALLOC_CONF (or PYTORCH_ALLOC_CONF) set
    by the user wins."""
    env = os.environ if env is None else env
    if int(env.get("WORLD_SIZE", "1")) == 1 and not {"PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF"} & env.keys():
        env["PYTORCH_CUDA_ALLOC_CONF"] = "expandable_segments:True"


def main(argv: list[str] | None = None) -> int:
    """Entry point: python -m tunelab.engine.train RUN_DIR."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m tunelab.engine.train RUN_DIR", file=sys.stderr)
        return 2
    allocator_defaults()
    return run(argv[0])


if __name__ == "__main__":
    sys.exit(main())
