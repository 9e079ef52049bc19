"""What to serve and how: the model, its adapters and the engine options (pure Python, shared by all surfaces)."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from tunelab.core.generation import InferenceError
from tunelab.core.schema import ConfigError

ENGINES = {
    "hf": "transformers generate + peft adapters; runs anywhere, CPU included",
    "vllm": "vLLM: in-process when importable, else `vllm serve` from --vllm-python (its own environment)",
    "openai": "any OpenAI-compatible server by base URL (vllm serve, SGLang, llama.cpp, Ollama, tunelab api)",
}
DTYPES = ("auto", "fp32", "bf16", "fp16")
VLLM_PYTHON_ENV = "TUNELAB_VLLM_PYTHON"  # a Python (vLLM's own venv) that runs `vllm serve`


def vllm_importable() -> bool:
    """Whether ``import vllm`` would work in this interpreter (checked without importing it)."""
    return importlib.util.find_spec("vllm") is not None


def vllm_reachable() -> bool:
    """Whether vLLM can run: importable in this Python, or a Python that has it named by $TUNELAB_VLLM_PYTHON."""
    return vllm_importable() or bool(os.environ.get(VLLM_PYTHON_ENV))


def require_vllm(field: str) -> None:
    """ConfigError naming ``field`` when vLLM cannot run here (checked before any slow work starts)."""
    if not vllm_reachable():
        raise ConfigError(f"{field}: needs vLLM, importable in this Python or in the Python ${VLLM_PYTHON_ENV} names "
                          "(make vllm-venv builds .venv-vllm)")


@dataclass
class AdapterSpec:
    """A LoRA adapter to serve under ``name`` (its folder holds adapter_config.json)."""

    name: str
    path: str
    base_model: str | None = None
    rank: int = 16


@dataclass
class ModelSpec:
    """A base model (local folder or hub id) and zero or more adapters, each addressable by name."""

    model: str  # as the user gave it ('demo', a hub id, a folder)
    path: str  # what to load: a local folder or a hub id
    name: str  # the name it is served under
    adapters: list[AdapterSpec] = field(default_factory=list)
    template: str = "auto"
    warnings: list[str] = field(default_factory=list)

    def names(self) -> list[str]:
        """Served names: the base model first, then the adapters."""
        return [self.name, *(a.name for a in self.adapters)]

    def adapter(self, name: str) -> AdapterSpec | None:
        """The adapter served as ``name`` (None for the base model)."""
        return next((a for a in self.adapters if a.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return asdict(self)


@dataclass
class EngineOptions:
    """Engine settings; each engine reads the ones that concern it."""

    engine: str = "hf"
    dtype: str = "auto"
    trust_remote_code: bool = False
    max_model_len: int | None = None  # vLLM
    vllm_python: str | None = None  # vLLM in its own environment: that interpreter runs `vllm serve`
    base_url: str | None = None  # openai engine
    api_key: str | None = None  # openai engine
    startup_timeout: float = 900.0
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        """Raise InferenceError naming the bad field and the valid choices."""
        if self.engine not in ENGINES:
            raise InferenceError(f"engine: {self.engine!r} is not one of {', '.join(ENGINES)}")
        if self.dtype not in DTYPES:
            raise InferenceError(f"dtype: {self.dtype!r} is not one of {', '.join(DTYPES)}")
        if self.engine == "openai" and not self.base_url:
            raise InferenceError("engine 'openai' needs a base URL (--base-url http://host:port/v1)")
