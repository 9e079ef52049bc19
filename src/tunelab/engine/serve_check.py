"""The export's last check (``ExportConfig.serve_check``): serve the exported folder with vLLM as a consumer would
(`vllm serve FOLDER`, which applies the folder's own chat template and stops at its generation config's eos ids),
ask the verification prompt through /v1/chat/completions, and report the answer next to transformers' greedy one.

vLLM runs in this Python when it is importable here, else from ``$TUNELAB_VLLM_PYTHON`` (its own environment).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunelab.core.generation import InferenceError
from tunelab.core.serving import VLLM_PYTHON_ENV, EngineOptions, ModelSpec, require_vllm

log = logging.getLogger(__name__)
MAX_TOKENS = 32
MAX_MODEL_LEN = 1024  # a short prompt: keeps vLLM's KV cache small (CPU builds reserve it up front)


def vllm_python() -> str:
    """The Python that runs `vllm serve`; ConfigError naming how to get one when there is none."""
    from tunelab.engine.inference.vllm_engine import _other_python, vllm_importable

    require_vllm("serve_check")
    if vllm_importable():
        return sys.executable
    return _other_python(os.environ.get(VLLM_PYTHON_ENV)) or sys.executable


def _max_model_len(folder: Path) -> int:
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return MAX_MODEL_LEN
    return min(MAX_MODEL_LEN, int(config.get("max_position_embeddings") or MAX_MODEL_LEN))


def serve_check(folder: Path, dtype_name: str, messages: list[dict], expected: str | None, trust_remote_code: bool,
                say: Callable[..., None]) -> dict[str, Any]:
    """Start vLLM on ``folder``, ask ``messages`` (greedy), stop it; the answer, whether it begins with transformers'
    greedy text ``expected``, and timings. ``passed``: vLLM answered with text (and, in fp32, the same text)."""
    from tunelab.engine.inference.vllm_server import serve_with_vllm

    python = vllm_python()
    spec = ModelSpec(model=str(folder), path=str(folder), name="export")
    options = EngineOptions(engine="vllm", dtype=dtype_name, trust_remote_code=trust_remote_code,
                            max_model_len=_max_model_len(folder), startup_timeout=900.0)
    say(f"serve check: starting vLLM on {folder} ({python})", stage="serve")
    started = time.monotonic()
    try:
        engine = serve_with_vllm(spec, options, python)
    except InferenceError as exc:
        say(f"serve check FAILED: {exc}")
        return {"passed": False, "answer": "", "dtype": dtype_name, "summary": f"vLLM could not serve the export: {exc}"}
    try:
        ready_s = time.monotonic() - started
        reply = engine.client.chat.completions.create(model="export", messages=messages, temperature=0, max_tokens=MAX_TOKENS)
    finally:
        engine.close()
    choice = reply.choices[0]
    answer = choice.message.content or ""
    same = None if expected is None else answer.strip().startswith(expected.strip())
    passed = bool(answer.strip()) and (same is not False or dtype_name != "fp32")
    summary = (f"vLLM served the export and answered {answer[:80]!r} (finish: {choice.finish_reason}, "
               f"started in {ready_s:.0f} s)" + ("" if same is None else
               f"; {'the same text as' if same else 'NOT the text of'} transformers' greedy reply"))
    say(("serve check: " if passed else "serve check FAILED: ") + summary)
    return {"passed": passed, "answer": answer, "finish_reason": choice.finish_reason, "matches_transformers": same,
            "prompt": messages, "startup_s": round(ready_s, 1), "dtype": dtype_name, "summary": summary}
