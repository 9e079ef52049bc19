"""The evaluation job process: ``python -m tunelab.engine.evaluate JOB_DIR``.

Reads JOB_DIR/eval.yaml (an EvalConfig), scores the base model and the fine-tuned one on the same examples
(loss and perplexity; generation with BLEU/ROUGE/exact match; lm-eval benchmark tasks), and writes
predictions.jsonl, results.json (every metric for both sides with the delta and standard errors), ``metric``
events and status.json, the same way a training run does.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tunelab.core.config import RL, ConfigError
from tunelab.core.datasets import DataError
from tunelab.core.eval_config import EvalConfig, validate_eval_config
from tunelab.core.events import EventWriter
from tunelab.core.files import write_atomic, write_json_atomic
from tunelab.core.jobs import JobDir
from tunelab.core.sources import ModelSource, resolve_source
from tunelab.engine.eval_vllm import VLLMSides, use_vllm, vllm_bench, vllm_replies

log = logging.getLogger("tunelab.evaluate")
RESULTS_VERSION = 1


def _device_and_dtype(cfg: EvalConfig) -> tuple[str, Any, str]:
    import torch

    cuda = torch.cuda.is_available()
    name = cfg.dtype if cfg.dtype != "auto" else ("bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]
    return ("cuda" if cuda else "cpu"), dtype, {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}[name]


def _load(path: str | Path, cfg: EvalConfig, device: str, dtype: Any, reward_model: bool = False) -> Any:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    auto, extra = (AutoModelForSequenceClassification, {"num_labels": 1}) if reward_model else (AutoModelForCausalLM, {})
    try:
        model = auto.from_pretrained(str(path), dtype=dtype, trust_remote_code=cfg.trust_remote_code, **extra)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"model: {str(path)!r} could not be loaded ({' '.join(str(exc).split())[:300]})") from None
    from tunelab.engine.model import set_cpu_threads

    set_cpu_threads(model)
    return model.to(device).eval()


@contextlib.contextmanager
def _sides(source: ModelSource, base_path: str, cfg: EvalConfig, device: str, dtype: Any,
           reward_model: bool = False) -> Iterator[Any]:
    """Yields a function side -> model context: the adapter switched off for 'base', on for 'tuned'."""
    if source.adapter is not None:
        from peft import PeftModel

        base = _load(base_path, cfg, device, dtype, reward_model)
        model = PeftModel.from_pretrained(base, str(source.adapter)).eval()

        @contextlib.contextmanager
        def use(side: str) -> Iterator[Any]:
            with model.disable_adapter() if side == "base" else contextlib.nullcontext():
                yield model

        yield use
        return

    @contextlib.contextmanager
    def use_full(side: str) -> Iterator[Any]:
        loaded = _load(base_path if side == "base" else source.weights, cfg, device, dtype, reward_model)
        try:
            yield loaded
        finally:
            del loaded

    yield use_full


def evaluate(job: JobDir, writer: EventWriter) -> dict[str, Any]:
    """Run every configured metric for both sides; write results.json and predictions.jsonl."""
    from tunelab.engine.eval_lm import load_rows
    from tunelab.engine.export import resolve_template
    from tunelab.engine.jobproc import reporter
    from tunelab.engine.model import load_tokenizer, resolve_model_path

    cfg = validate_eval_config(job.options(), str(job.config_file))
    started = time.time()
    say = reporter(job, writer)  # each step in status.json: the Evaluate tab shows it, even after a reload
    source = resolve_source(cfg.run, cfg.model, cfg.adapter, cfg.template, cfg.trust_remote_code)
    say(f"loading {source.label}", stage="load")
    base_path = resolve_model_path(source.model)
    device, dtype, dtype_name = _device_and_dtype(cfg)
    tokenizer = load_tokenizer(source.tokenizer_dir(base_path), source.trust_remote_code)
    choice = resolve_template(source, base_path)
    sides = ["base", "tuned"] if cfg.compare_base else ["tuned"]
    cfg = _metrics_for_stage(cfg, source, sides)
    results: dict[str, Any] = {
        "v": RESULTS_VERSION, "source": {"label": source.label, "model": source.model, "adapter": str(source.tuned_path or "")},
        "template": choice.name, "metrics": [], "notes": [], "sides": sides, "device": device, "dtype": dtype_name,
        "timings": {},
    }
    vllm = VLLMSides(source, base_path, cfg, dtype_name, job.path / "vllm.log") if use_vllm(cfg, device == "cuda") else None
    results["engine"] = "vllm" if vllm else "hf"
    try:
        if {"loss", "predict"} & set(cfg.metrics):
            say("tokenizing the evaluation data", stage="data")
            data = load_rows(cfg, source, tokenizer, choice)
            results["data"] = {"description": data.description, "examples": len(data.rows)}
            results["notes"].append(f"scored on {data.description}: {len(data.rows)} examples")
            _score_lm(cfg, job, writer, results, data, tokenizer, choice, lambda: _sides(source, base_path, cfg, device, dtype),
                      sides, vllm, say)
        if "preference" in cfg.metrics:
            say("scoring preference pairs", stage="preference")
            _score_preference(cfg, source, base_path, device, dtype, writer, results, tokenizer, choice, sides)
        if "reward" in cfg.metrics:
            say("generating and scoring rewards", stage="reward")
            _score_reward(cfg, job, writer, results, source, base_path, tokenizer, choice, device, dtype, sides)
        if "bench" in cfg.metrics:
            _score_bench(cfg, source, base_path, device, dtype_name, writer, results, sides, vllm, say)
    finally:
        if vllm is not None:
            vllm.close()
    if vllm is not None:
        results["timings"]["vllm_start_s"] = round(vllm.start_s, 2)
        results["notes"].append(f"predict/bench on vLLM ({dtype_name}; the adapter as a LoRA request): "
                                f"{vllm.start_s:.1f} s of it starting vLLM")
    results["elapsed_s"] = round(time.time() - started, 2)
    write_json_atomic(job.results_file, results)
    return {"message": f"{len(results['metrics'])} metrics for {' and '.join(sides)}", "metrics": len(results["metrics"])}


def _score_lm(cfg: EvalConfig, job: JobDir, writer: EventWriter, results: dict, data: Any, tokenizer: Any,
              choice: Any, open_sides: Any, sides: list[str], vllm: VLLMSides | None, say: Any) -> None:
    """Loss and predict. The hf model (``open_sides()``, see _sides) does the loss, and predict unless vLLM does it;
    with vLLM it is released first, so vLLM starts on a device the hf model no longer occupies."""
    from tunelab.engine.eval_lm import decode_reference, prompt_and_reference
    from tunelab.engine.export import stop_token_ids
    from tunelab.engine.scoring import generation_rows, loss_rows

    losses: dict[str, Any] = {}
    replies: dict[str, list[str]] = {}
    stops = choice.stop_strings
    if "predict" in cfg.metrics and data.stage == "pt":
        raise DataError("predict needs chat data (prompts and replies); these datasets are plain text: use metrics=loss")
    split = [prompt_and_reference(row) for row in data.rows] if "predict" in cfg.metrics else []
    prompts, stop_ids = [p for p, _ in split], stop_token_ids(tokenizer, stops)
    if "loss" in cfg.metrics or (split and vllm is None):
        _score_lm_hf(cfg, results, data, tokenizer, open_sides, sides, prompts if vllm is None else [], stop_ids, stops,
                     losses, replies, say)
    if split and vllm is not None:
        _release_device()
        for side in sides:
            say(f"{side}: generating for {len(split)} prompts on vLLM", stage="generate", side=side, total=len(split))
            begun, started = time.monotonic(), vllm.start_s
            replies[side] = vllm_replies(vllm, side, prompts, tokenizer, cfg.max_new_tokens, stop_ids, stops)
            results["timings"][f"predict_{side}_s"] = round(time.monotonic() - begun - (vllm.start_s - started), 2)
    if losses:
        _add(results, writer, loss_rows(losses["tuned"], losses.get("base"), cfg.bootstrap, cfg.seed))
    if split:
        references = [decode_reference(tokenizer, ref, stops) for _, ref in split]
        _add(results, writer, generation_rows(references, replies["tuned"], replies.get("base"), cfg.bootstrap, cfg.seed))
        lines = []
        for i, ((prompt, _), reference) in enumerate(zip(split, references)):
            text = tokenizer.decode(prompt)
            record = {"index": i, "prompt": text, "reference": reference}
            if text in data.chats:  # the conversation itself, for showing it as chat
                record["messages"] = data.chats[text]
            record.update({side: replies[side][i] for side in sides})
            lines.append(json.dumps(record, ensure_ascii=False))
        write_atomic(job.predictions_file, "\n".join(lines) + "\n")
        results["predictions"] = job.predictions_file.name


def _score_lm_hf(cfg: EvalConfig, results: dict, data: Any, tokenizer: Any, open_sides: Any, sides: list[str],
                 prompts: list[list[int]], stop_ids: list[int], stops: list[str], losses: dict[str, Any],
                 replies: dict[str, list[str]], say: Any) -> None:
    """Each side's loss (when asked) and replies to ``prompts`` (when given) on the hf model; the model is no longer
    referenced once this returns."""
    from tunelab.engine.eval_lm import example_losses, generate

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    with open_sides() as use:
        for side in sides:
            with use(side) as model:
                if "loss" in cfg.metrics:
                    say(f"{side}: loss on {len(data.rows)} examples", stage="loss", side=side, total=len(data.rows))
                    losses[side] = example_losses(model, data.rows, cfg.batch_size, pad)
                if prompts:
                    def progress(done: int, total: int, side: str = side) -> None:
                        say(f"{side}: generated {done}/{total} replies", stage="generate", side=side, done=done, total=total)

                    begun = time.monotonic()
                    replies[side] = generate(model, tokenizer, prompts, cfg.max_new_tokens, cfg.batch_size, stop_ids, stops,
                                             progress)
                    results["timings"][f"predict_{side}_s"] = round(time.monotonic() - begun, 2)


def _release_device() -> None:
    """Collect the released hf model and return its cached CUDA memory, so vLLM finds the GPU free."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _score_reward(cfg: EvalConfig, job: JobDir, writer: EventWriter, results: dict, source: ModelSource,
                  base_path: str, tokenizer: Any, choice: Any, device: str, dtype: Any, sides: list[str]) -> None:
    from tunelab.engine.eval_reward import score_rewards

    with _sides(source, base_path, cfg, device, dtype) as use:
        rows, records, what = score_rewards(cfg, source, tokenizer, choice, use, sides)
    results["notes"].append(f"rewards of greedy completions on {what}: {len(records)} prompts")
    _add(results, writer, rows)
    if "predictions" not in results:
        write_atomic(job.predictions_file, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        results["predictions"] = job.predictions_file.name


def _metrics_for_stage(cfg: EvalConfig, source: ModelSource, sides: list[str]) -> EvalConfig:
    """Runs of the preference stages are scored on pairs (their default 'loss' becomes 'preference'), grpo/rloo runs
    by their rewards ('reward')."""
    stage = source.run_config.stage if source.run_config else "sft"
    if stage in ("pt", "sft"):
        return cfg
    if stage in RL and cfg.metrics == ["loss"] and not cfg.dataset:
        log.info("stage %s run: scoring the mean reward of its reward functions on its prompts (metrics=reward)", stage)
        return cfg.model_copy(update={"metrics": ["reward"]})
    if stage == "rm" and {"predict", "bench"} & set(cfg.metrics):
        raise ConfigError("metrics: a reward model (stage rm) is scored with metrics=preference, not predict/bench")
    if cfg.metrics == ["loss"] and not cfg.dataset:
        log.info("stage %s run: scoring preference accuracy on its pairs (metrics=preference)", stage)
        return cfg.model_copy(update={"metrics": ["preference"]})
    return cfg


def _score_preference(cfg: EvalConfig, source: ModelSource, base_path: str, device: str, dtype: Any,
                      writer: EventWriter, results: dict, tokenizer: Any, choice: Any, sides: list[str]) -> None:
    from tunelab.engine.eval_pref import load_pairs, preference_rows

    reward_model = bool(source.run_config and source.run_config.stage == "rm")
    rows, what = load_pairs(cfg, source, tokenizer, choice)
    results["notes"].append(f"preference pairs from {what}: {len(rows)}")
    if reward_model and "base" in sides:
        results["notes"].append("reward model: only the tuned side is scored (the base has no trained score head)")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    with _sides(source, base_path, cfg, device, dtype, reward_model) as use:
        _add(results, writer, preference_rows(cfg, rows, use, sides, pad, reward_model))


def _score_bench(cfg: EvalConfig, source: ModelSource, base_path: str, device: str, dtype_name: str,
                 writer: EventWriter, results: dict, sides: list[str], vllm: VLLMSides | None, say: Any) -> None:
    from tunelab.engine.bench import bench_rows, run_bench

    runs = {}
    tokenizer = source.tokenizer_dir(base_path)
    for side in sides:
        say(f"{side}: lm-eval tasks {', '.join(cfg.tasks)} (limit {cfg.limit}){' on vLLM' if vllm else ''}", stage="bench",
            side=side)
        if vllm is not None:
            runs[side] = vllm_bench(cfg, vllm, side, str(tokenizer))
        elif side == "base":
            runs[side] = run_bench(cfg, base_path, None, tokenizer, device, dtype_name)
        elif source.adapter is not None:
            runs[side] = run_bench(cfg, base_path, str(source.adapter), tokenizer, device, dtype_name)
        else:
            runs[side] = run_bench(cfg, str(source.weights or base_path), None, tokenizer, device, dtype_name)
    _add(results, writer, bench_rows(runs["tuned"], runs.get("base")))
    if cfg.limit:
        results["notes"].append(f"benchmark quick mode: at most {cfg.limit} examples per task")


def _add(results: dict, writer: EventWriter, rows: list[dict[str, Any]]) -> None:
    for row in rows:
        results["metrics"].append(row)
        writer.write("metric", **row)
        log.info("%s: base %s tuned %s delta %s (+- %s)", row["name"], row["base"], row["tuned"], row["delta"], row["delta_stderr"])


def main(argv: list[str] | None = None) -> int:
    """Entry point: python -m tunelab.engine.evaluate JOB_DIR."""
    from tunelab.engine.bench import BenchError
    from tunelab.engine.jobproc import run_job

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m tunelab.engine.evaluate JOB_DIR", file=sys.stderr)
        return 2
    return run_job(JobDir(argv[0], "eval"), evaluate, (BenchError,))


if __name__ == "__main__":
    sys.exit(main())
