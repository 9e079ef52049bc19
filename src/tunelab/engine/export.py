"""Merge a LoRA/DoRA adapter into its base in full precision and export a self-contained model folder.

The export holds sharded safetensors, the tokenizer with the registry template as ``chat_template``, a
generation_config whose eos ids are the template's stop tokens, the resolved run config, an Ollama Modelfile
and (optionally) a GGUF file. It is written to a staging folder, verified (reloaded with plain transformers,
logits compared with the unmerged base + adapter on a fixed prompt) and only then renamed into place.

Also a job process: ``python -m tunelab.engine.export JOB_DIR`` reads JOB_DIR/export.yaml and keeps
JOB_DIR/status.json current (the Export tab runs it so that the UI process never imports torch).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunelab.core.config import ConfigError, dump_config
from tunelab.core.export_config import ExportConfig
from tunelab.core.files import write_atomic, write_json_atomic
from tunelab.core.sources import ModelSource, resolve_source
from tunelab.core.template_choice import TemplateChoice, choose_template

log = logging.getLogger("tunelab.export")
Progress = Callable[..., None]  # (message, stage=<load|merge|gguf|save|verify|verified|written|serve|push>)
VERIFY_MESSAGES = [{"role": "user", "content": "Who are you?"}]
VERIFY_NEW_TOKENS = 8
# Max |logit difference| allowed, relative to max(1, max |reference logit|): fp32 keeps the merged weights
# exactly up to summation order; bf16/fp16 round each weight (relative error 2^-9 / 2^-11).
TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2, "bf16": 4e-2}


class ExportError(ValueError):
    """An export that cannot be done as asked; the message says why and what to do."""


class QuantizedBaseError(ExportError):
    """Merging into quantized base weights was refused."""


def default_out(source: ModelSource) -> Path:
    """Where a run's export goes when no --out is given: <run>/merged."""
    assert source.run is not None
    return source.run.path / "merged"


def check_unquantized(model: Any) -> None:
    """Refuse to merge into a model whose base weights are quantized (bitsandbytes 4/8-bit and the like)."""
    quantized = (
        getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False)
        or getattr(model, "hf_quantizer", None) is not None
        or getattr(getattr(model, "config", None), "quantization_config", None) is not None
    )
    if quantized:
        raise QuantizedBaseError(
            "the base model is loaded quantized; merging an adapter into quantized weights loses precision. "
            "Reload the base unquantized (reload_unquantized=true, CLI --reload-unquantized) and merge there"
        )


def refuse_quantized_run(source: ModelSource, cfg: ExportConfig) -> None:
    """A run trained on a quantized base merges only into the base reloaded in full precision, when asked."""
    if source.quantization != "none" and source.adapter is not None and not cfg.reload_unquantized:
        raise QuantizedBaseError(
            f"run {source.label} trained on a {source.quantization} quantized base; merging into quantized weights "
            "loses precision. Re-run with --reload-unquantized (Export tab: 'Reload the base unquantized') to load "
            "the base in full precision and merge there"
        )


def resolve_template(source: ModelSource, base_path: str) -> TemplateChoice:
    """The chat template the model was trained with (the tuned folder's, else the base's, else the catalog's)."""
    from tunelab.engine.model import local_dir

    folder = source.template_dir if source.template_dir and (source.template_dir / "tokenizer_config.json").is_file() else None
    return choose_template(source.template, source.model, folder or local_dir(base_path))


def save_dtype(cfg: ExportConfig, base_path: str) -> str:
    """'fp32', 'bf16' or 'fp16': as configured, or the base model's own dtype for 'auto'."""
    if cfg.dtype != "auto":
        return cfg.dtype
    import json

    config_file = Path(base_path) / "config.json"
    try:
        data = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "fp32"
    own = str(data.get("dtype") or data.get("torch_dtype") or "float32")
    return {"bfloat16": "bf16", "float16": "fp16"}.get(own, "fp32")


def export_model(cfg: ExportConfig, progress: Progress | None = None) -> dict[str, Any]:
    """Merge, save, verify and (optionally) convert to GGUF and push; returns the export report."""
    import torch

    from tunelab.engine.model import load_tokenizer, resolve_model_path

    from tunelab.engine.vlm import is_vlm, load_processor

    say = progress or (lambda message, **_: log.info("%s", message))
    started = time.time()
    source = resolve_source(cfg.run, cfg.model, cfg.adapter, cfg.template, cfg.trust_remote_code)
    if source.run_config is not None and source.run_config.stage == "rm":
        raise ConfigError(
            "run: a reward model (stage rm) is not exported as a chat model; its adapter folder loads with peft on "
            "AutoModelForSequenceClassification(num_labels=1)"
        )
    refuse_quantized_run(source, cfg)
    if cfg.serve_check:  # before the slow part: is there a vLLM to serve the export with?
        from tunelab.engine.serve_check import vllm_python

        vllm_python()
    out = Path(cfg.out).expanduser().resolve() if cfg.out else default_out(source)
    if out.exists() and any(out.iterdir()) and not cfg.overwrite:
        raise ExportError(f"{out} already exists and is not empty; choose another --out or pass --overwrite")
    base_path = resolve_model_path(source.model)
    choice = resolve_template(source, base_path)
    dtype_name = save_dtype(cfg, base_path)
    say(f"loading {source.model} in fp32 (template: {choice.name})", stage="load")
    vlm = is_vlm(str(source.weights or base_path), source.trust_remote_code)
    if vlm and cfg.gguf:
        raise ExportError("gguf: a vision-language model is not converted to GGUF here (its vision tower needs a "
                          "separate mmproj file); export without gguf")
    load = load_processor if vlm else load_tokenizer  # a VLM's processor stands in for the tokenizer
    tokenizer = load(source.tokenizer_dir(base_path), source.trust_remote_code)
    if cfg.gguf:  # refuse an unsupported GGUF export before the slow part
        from transformers import AutoConfig

        from tunelab.engine.gguf import check_supported

        check_supported(AutoConfig.from_pretrained(str(source.weights or base_path)), tokenizer)
    model = _load_fp32(source.weights or base_path, source.trust_remote_code, vlm)
    check_unquantized(model)
    prompt = _prompt_inputs(tokenizer, choice, vlm)
    reference = _reference(model, source, prompt, say)
    merged = reference.pop("model")
    staging = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        gguf_report = None
        if cfg.gguf:
            from tunelab.engine.gguf import write_gguf

            say(f"writing GGUF ({cfg.gguf}) from the fp32 merged weights", stage="gguf")
            gguf_report = write_gguf(merged, tokenizer, choice.template, staging, cfg.gguf)
        say(f"saving {dtype_name} safetensors (shards up to {cfg.shard_size}) to {out}", stage="save")
        merged.to({"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype_name])
        merged.save_pretrained(str(staging), max_shard_size=cfg.shard_bytes, safe_serialization=True)
        files = write_companions(staging, tokenizer, choice, base_path, source, gguf_report["file"] if gguf_report else None)
        if gguf_report:
            files["gguf"] = gguf_report["file"]
        del merged
        verify = verify_export(staging, prompt, reference, dtype_name, say, vlm) if cfg.verify else None
        if verify is not None and not verify["passed"]:
            raise ExportError(f"verification failed: {verify['summary']}")
        report = {
            "out": str(out), "source": _describe_source(source), "template": choice.name,
            "template_reason": choice.reason, "dtype": dtype_name, "shard_size": cfg.shard_size,
            "files": files, "verify": verify, "gguf": gguf_report, "elapsed_s": round(time.time() - started, 2),
        }
        write_json_atomic(staging / "tunelab_export.json", report)
        _readable(staging)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    say(f"export written to {out}", stage="written")
    if cfg.serve_check:
        from tunelab.engine.serve_check import serve_check

        expected = verify["generated"] if verify else None
        report["serve_check"] = serve_check(out, dtype_name, VERIFY_MESSAGES, expected, source.trust_remote_code, say)
        write_json_atomic(out / "tunelab_export.json", report)
    if cfg.push_to_hub:
        report["pushed"] = push_to_hub(out, cfg.push_to_hub, say)
    return report


def _readable(folder: Path) -> None:
    """Files written through temp files are 0600; an export is meant to be served by others (e.g. ollama)."""
    umask = os.umask(0)
    os.umask(umask)
    for path in folder.iterdir():
        if path.is_file():
            path.chmod(0o666 & ~umask)


def _load_fp32(path: str | Path, trust_remote_code: bool, vlm: bool = False) -> Any:
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    auto = AutoModelForImageTextToText if vlm else AutoModelForCausalLM
    try:
        model = auto.from_pretrained(str(path), dtype=torch.float32, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ExportError(f"model: {str(path)!r} could not be loaded ({' '.join(str(exc).split())[:300]})") from None
    model.eval()
    return model


def _prompt_inputs(tokenizer: Any, choice: TemplateChoice, vlm: bool = False) -> dict[str, Any]:
    """The fixed verification prompt (for a VLM: with a picture), rendered with the template exactly as serving would,
    as model inputs."""
    if vlm:
        from tunelab.engine.export_vlm import prompt_inputs

        return prompt_inputs(tokenizer, choice)
    text = choice.template.render(VERIFY_MESSAGES, add_generation_prompt=True, model=choice.entry).text
    return {"input_ids": tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids}


def _reference(model: Any, source: ModelSource, prompt: dict[str, Any], say: Progress) -> dict[str, Any]:
    """Logits and greedy tokens of the unmerged model (and of the bare base), then the merged model."""
    import torch

    with torch.no_grad():
        if source.adapter is None:
            return {"logits": model(**prompt).logits, "tokens": _greedy(model, prompt), "base_logits": None, "model": model}
        from peft import PeftModel

        base_logits = model(**prompt).logits
        peft_model = PeftModel.from_pretrained(model, str(source.adapter))
        peft_model.eval()
        logits = peft_model(**prompt).logits
        tokens = _greedy(peft_model, prompt)
        say(f"merging {source.adapter.name} into the base (fp32)", stage="merge")
        merged = merge_adapter(peft_model)
    return {"logits": logits, "tokens": tokens, "base_logits": base_logits, "model": merged}


def merge_adapter(peft_model: Any) -> Any:
    """merge_and_unload, refusing quantized bases (LoRA and DoRA both merge exactly in full precision)."""
    check_unquantized(peft_model.get_base_model())
    return peft_model.merge_and_unload(safe_merge=True)


def _greedy(model: Any, prompt: dict[str, Any]) -> list[int]:
    import torch

    ids = prompt["input_ids"]
    inputs = {"attention_mask": torch.ones_like(ids), **prompt}
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=VERIFY_NEW_TOKENS, do_sample=False, pad_token_id=0)
    return out[0, ids.shape[1]:].tolist()


def write_companions(
    folder: Path, tokenizer: Any, choice: TemplateChoice, base_path: str, source: ModelSource,
    gguf_file: str | None = None,
) -> dict[str, str]:
    """Tokenizer (with chat_template), generation_config, resolved run config and Modelfile."""
    from tunelab.core.ollama import write_modelfile
    from tunelab.engine.vlm import is_processor

    if is_processor(tokenizer):
        from tunelab.engine.export_vlm import save_processor

        save_processor(folder, tokenizer, choice)
        tokenizer = tokenizer.tokenizer
    else:
        tokenizer.chat_template = choice.template.serving_jinja
        tokenizer.save_pretrained(str(folder))
    portable_tokenizer_config(folder)
    write_generation_config(folder, tokenizer, choice, base_path)
    files = {"chat_template": "chat_template.jinja", "generation_config": "generation_config.json", "modelfile": "Modelfile"}
    if source.run_config is not None:
        write_atomic(folder / "tunelab_run.yaml", dump_config(source.run_config))
        files["run_config"] = "tunelab_run.yaml"
    write_modelfile(folder, choice.template, base=f"./{gguf_file}" if gguf_file else ".")
    return files


# transformers 5 names its generic fast tokenizer TokenizersBackend; 4.x only knows PreTrainedTokenizerFast,
# which 5.x still resolves to the same class.
PORTABLE_TOKENIZER_CLASSES = {"TokenizersBackend": "PreTrainedTokenizerFast"}
# Call-time and loader state that transformers 5 leaks into a saved config (e.g. truncation from training).
RUNTIME_TOKENIZER_KEYS = ("is_local", "local_files_only", "max_length", "stride", "truncation_strategy", "pad_to_multiple_of")


def portable_tokenizer_config(folder: Path) -> None:
    """Rewrite tokenizer_config.json so transformers 4.x loads it as well as 5.x (class names 4.x lacks, leaked call state)."""
    path = folder / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    name = config.get("tokenizer_class")
    fixed = {k: v for k, v in config.items() if k not in RUNTIME_TOKENIZER_KEYS}
    fixed["tokenizer_class"] = PORTABLE_TOKENIZER_CLASSES.get(name, name)
    if fixed != config:
        write_atomic(path, json.dumps(fixed, indent=2, ensure_ascii=False) + "\n")


def stop_token_ids(tokenizer: Any, stops: list[str]) -> list[int]:
    """Ids of the stop strings that are single tokens of this tokenizer (others stay Modelfile stops)."""
    ids = []
    vocab = tokenizer.get_vocab()
    for stop in stops:
        if stop in vocab and vocab[stop] not in ids:
            ids.append(vocab[stop])
    if not ids and tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return ids


def write_generation_config(folder: Path, tokenizer: Any, choice: TemplateChoice, base_path: str) -> None:
    """generation_config.json with the template's stop tokens as eos ids (and the base's sampling defaults)."""
    from transformers import GenerationConfig

    try:
        config = GenerationConfig.from_pretrained(base_path)
    except (OSError, ValueError):
        config = GenerationConfig()
    eos = stop_token_ids(tokenizer, choice.stop_strings)
    config.eos_token_id = eos[0] if len(eos) == 1 else eos
    if tokenizer.bos_token_id is not None:
        config.bos_token_id = tokenizer.bos_token_id
    config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    config.save_pretrained(str(folder))


def verify_export(folder: Path, prompt: dict[str, Any], reference: dict[str, Any], dtype_name: str, say: Progress,
                  vlm: bool = False) -> dict[str, Any]:
    """Reload with plain transformers; compare logits (and a few greedy tokens) with the unmerged model."""
    import torch
    from transformers import AutoTokenizer

    say("verifying: reloading the export with plain transformers" + (" (a prompt with a picture)" if vlm else ""), stage="verify")
    model = _load_fp32(folder, False, vlm)
    with torch.no_grad():
        logits = model(**prompt).logits
    tokens = _greedy(model, prompt)
    ref = reference["logits"]
    diff = float((logits - ref).abs().max())
    scale = max(1.0, float(ref.abs().max()))
    tolerance = TOLERANCE[dtype_name] * scale
    effect = None if reference["base_logits"] is None else float((ref - reference["base_logits"]).abs().max())
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    if vlm:
        from tunelab.engine.export_vlm import template_renders_inputs

        template_ok = template_renders_inputs(folder, prompt)
    else:
        rendered = tokenizer.apply_chat_template(VERIFY_MESSAGES, add_generation_prompt=True, tokenize=False)
        template_ok = tokenizer(rendered, add_special_tokens=False).input_ids == prompt["input_ids"][0].tolist()
    passed = diff <= tolerance and template_ok
    summary = (
        ("on a prompt with a picture: " if vlm else "")
        + f"max |logit diff| {diff:.3g} vs unmerged (tolerance {tolerance:.3g} for {dtype_name})"
        + (f"; the adapter itself moves logits by up to {effect:.3g}" if effect is not None else "")
        + f"; greedy tokens {'match' if tokens == reference['tokens'] else 'differ'}"
        + f"; chat_template {'renders the prompt identically' if template_ok else 'renders a DIFFERENT prompt'}"
    )
    if effect is not None and effect <= tolerance:
        summary += "; note: the adapter moves logits less than the tolerance, so this check cannot tell merged from unmerged"
    say(("verified: " if passed else "verification FAILED: ") + summary, stage="verified")
    return {
        "passed": passed, "max_abs_diff": diff, "tolerance": tolerance, "adapter_effect": effect,
        "tokens_match": tokens == reference["tokens"], "template_ok": template_ok,
        "generated": tokenizer.decode(tokens, skip_special_tokens=True), "summary": summary,
    }


def _describe_source(source: ModelSource) -> dict[str, Any]:
    return {
        "run": str(source.run.path) if source.run else None, "model": source.model,
        "adapter": str(source.adapter) if source.adapter else None,
        "weights": str(source.weights) if source.weights else None, "quantization": source.quantization,
    }


def push_to_hub(folder: Path, repo: str, say: Progress) -> str:
    """Upload the export to a hub model repo; ExportError (naming the cause) when that fails."""
    from huggingface_hub import HfApi

    say(f"pushing {folder} to the hub repo {repo}", stage="push")
    try:
        api = HfApi()
        api.create_repo(repo, repo_type="model", exist_ok=True)
        info = api.upload_folder(folder_path=str(folder), repo_id=repo, repo_type="model")
    except Exception as exc:  # offline, no token, no permission: say which
        raise ExportError(f"export written to {folder}, but pushing to {repo} failed: {type(exc).__name__}: {exc}".splitlines()[0]) from None
    return str(getattr(info, "commit_url", info))


def main(argv: list[str] | None = None) -> int:
    """Entry point: python -m tunelab.engine.export JOB_DIR (JOB_DIR/export.yaml in, status.json out)."""
    from tunelab.engine.export_job import run_job

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m tunelab.engine.export JOB_DIR", file=sys.stderr)
        return 2
    return run_job(argv[0])


if __name__ == "__main__":
    sys.exit(main())
