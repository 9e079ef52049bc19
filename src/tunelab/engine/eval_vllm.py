"""Evaluation on vLLM (``EvalConfig.engine``): greedy predictions batched by vLLM with the fine-tuned side as a LoRA
request, and lm-eval tasks on vLLM.

One vLLM serves the whole job: the base model, and the adapter per request, so both sides cost one start. It runs
in this Python when vLLM is importable here (``vllm.LLM``), else as ``vllm serve`` from ``$TUNELAB_VLLM_PYTHON``
(vLLM's own environment). lm-eval then uses its own vllm backend where vLLM shares this Python, else its
``local-completions`` model against that server (echo + logprobs for log-likelihood tasks).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from tunelab.core.eval_config import EvalConfig
from tunelab.core.serving import AdapterSpec, EngineOptions, ModelSpec, require_vllm, vllm_reachable
from tunelab.core.sources import ModelSource

log = logging.getLogger(__name__)
GENERATING = ("predict", "bench")
CHUNK = 256  # prompts per vLLM request (vLLM schedules them as one batch)


def use_vllm(cfg: EvalConfig, cuda: bool) -> bool:
    """Whether predict/bench run on vLLM: always for engine=vllm (ConfigError when vLLM cannot run here), for auto
    only on a GPU where vLLM can run (on a CPU its start costs more than it saves on the sets the studio evaluates)."""
    if cfg.engine == "vllm":
        require_vllm("engine 'vllm'")
    if cfg.engine == "hf" or not set(GENERATING) & set(cfg.metrics):
        return False
    return cfg.engine == "vllm" or (cuda and vllm_reachable())


def _rank(adapter: Path) -> int:
    """The adapter's LoRA rank, rounded up to one vLLM accepts as max_lora_rank."""
    from tunelab.engine.inference.vllm_engine import LORA_RANKS

    try:
        rank = int(json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8")).get("r") or 16)
    except (OSError, ValueError):
        rank = 16
    return next((r for r in LORA_RANKS if r >= rank), rank)


def cuda() -> bool:
    """Whether torch sees a CUDA GPU."""
    import torch

    return torch.cuda.is_available()


class VLLMSides:
    """The job's vLLM, opened on first use: both sides from one engine when the fine-tuned side is an adapter (served
    as 'tuned' next to 'base'); a fully fine-tuned model gets its own engine in turn. ``close()`` stops it."""

    def __init__(self, source: ModelSource, base_path: str, cfg: EvalConfig, dtype_name: str, log_path: Path):
        self.source, self.base_path, self.cfg, self.log_path = source, base_path, cfg, log_path
        self.dtype = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}[dtype_name]
        self.engine: Any = None
        self.path: str | None = None
        self.start_s = 0.0  # time spent starting vLLM

    def target(self, side: str) -> tuple[Any, str]:
        """(engine, served name) for 'base' or 'tuned'."""
        adapter = self.source.adapter
        full = adapter is None and side == "tuned"
        path = str(self.source.weights) if full else self.base_path
        name = "tuned" if full else "base"
        if self.path != path:
            self.close()
            started = time.monotonic()
            self.engine, self.path = self._open(path, name, [] if full or adapter is None else [Path(adapter)]), path
            self.start_s += time.monotonic() - started
        return self.engine, ("tuned" if side == "tuned" else name)

    def _open(self, path: str, name: str, adapters: list[Path]) -> Any:
        from tunelab.engine.inference.vllm_engine import open_vllm

        spec = ModelSpec(model=path, path=path, name=name,
                         adapters=[AdapterSpec("tuned", str(a.resolve()), rank=_rank(a)) for a in adapters])
        options = EngineOptions(
            engine="vllm", dtype=self.dtype, trust_remote_code=self.cfg.trust_remote_code,
            extra={"vllm_log": str(self.log_path), "vllm_args": ["--generation-config", "vllm"],
                   "vllm_kwargs": {"generation_config": "vllm"}},
        )
        log.info("vllm: serving %s%s (%s)", path, " + adapter 'tuned'" if adapters else "", self.dtype)
        return open_vllm(spec, options)

    def close(self) -> None:
        """Stop the engine (and the server it started)."""
        if self.engine is not None:
            self.engine.close()
        self.engine, self.path = None, None


def vllm_replies(sides: VLLMSides, side: str, prompts: list[list[int]], tokenizer: Any, max_new_tokens: int,
                 stop_ids: list[int], stops: list[str]) -> list[str]:
    """Greedy replies for tokenized prompts on vLLM, decoded and cut exactly as the hf engine's are."""
    from tunelab.engine.eval_lm import decode_reply

    engine, name = sides.target(side)
    ids: list[list[int]] = []
    for start in range(0, len(prompts), CHUNK):
        ids += engine.greedy_ids(name, prompts[start : start + CHUNK], max_new_tokens, stop_ids)
    return [decode_reply(tokenizer, row, stops) for row in ids]


def vllm_bench(cfg: EvalConfig, sides: VLLMSides, side: str, tokenizer_dir: str) -> dict[str, Any]:
    """lm-eval tasks for one side on vLLM: lm-eval's vllm backend in this Python, else local-completions against
    the job's `vllm serve`."""
    from tunelab.engine.bench import run_tasks
    from tunelab.engine.inference.vllm_engine import vllm_importable

    if vllm_importable():  # as open_vllm decides: vLLM in this Python runs here
        sides.close()  # lm-eval's backend loads its own vllm.LLM: one at a time on the device
        return run_tasks(cfg, lambda: native_lm(cfg, sides, side, tokenizer_dir))

    def served() -> Any:
        from lm_eval.models.openai_completions import LocalCompletionsAPI

        engine, name = sides.target(side)
        # vLLM computes prompt logprobs (echo) of several prompts in one step with one LoRA index per sequence, not
        # per token, and fails (vllm-project/vllm#29955): with LoRA enabled, one prompt per request, one at a time.
        batch = 1 if engine.spec is not None and engine.spec.adapters else cfg.batch_size
        return LocalCompletionsAPI(
            model=name, base_url=f"{engine.base_url}/completions", tokenizer=tokenizer_dir, tokenizer_backend="huggingface",
            header={"Authorization": f"Bearer {engine.client.api_key}"}, batch_size=batch, num_concurrent=1,
            max_retries=1, trust_remote_code=cfg.trust_remote_code, timeout=1800,
        )

    return run_tasks(cfg, served)


def native_lm(cfg: EvalConfig, sides: VLLMSides, side: str, tokenizer_dir: str) -> Any:
    """lm-eval's own vllm backend for one side (the adapter as its LoRA; one request at a time then, as in vllm_bench)."""
    from lm_eval.models.vllm_causallms import VLLM

    adapter = sides.source.adapter
    full = adapter is None and side == "tuned"
    lora = str(adapter) if adapter is not None and side == "tuned" else None
    return VLLM(
        pretrained=str(sides.source.weights) if full else sides.base_path, tokenizer=tokenizer_dir,
        dtype={"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[sides.dtype], batch_size=1 if lora else "auto",
        lora_local_path=lora, max_lora_rank=_rank(Path(lora)) if lora else 16, seed=cfg.seed, enforce_eager=not cuda(),
        trust_remote_code=cfg.trust_remote_code, generation_config="vllm",
    )
