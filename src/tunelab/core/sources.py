"""What a fine-tuned model is made of: a base model plus a PEFT adapter, or a fully fine-tuned model folder.

Export and evaluation both start from either a training run directory or an explicit ``model`` (+ ``adapter``);
this module resolves either into one ModelSource, with a one-line message for every way that can go wrong.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tunelab.core.config import ConfigError, RunConfig
from tunelab.core.rundir import RunDir


class SourceError(ValueError):
    """The run, model or adapter given cannot be used; the message says which and why."""


@dataclass
class ModelSource:
    """A base model and what fine-tuning made of it."""

    model: str
    adapter: Path | None = None
    weights: Path | None = None
    template: str = "auto"
    quantization: str = "none"
    trust_remote_code: bool = False
    run: RunDir | None = None
    run_config: RunConfig | None = None

    @property
    def tuned_path(self) -> Path | None:
        """The folder holding the fine-tuned weights (adapter or full model)."""
        return self.adapter or self.weights

    @property
    def label(self) -> str:
        """A short human name: the run id, else the adapter's or model's folder name."""
        if self.run is not None:
            return self.run.run_id
        return (self.tuned_path or Path(self.model)).name

    def tokenizer_dir(self, base_path: str) -> str:
        """Where to load the tokenizer from: the tuned folder when it saved one, else the base model."""
        tuned = self.tuned_path
        return str(tuned) if tuned is not None and (tuned / "tokenizer_config.json").is_file() else base_path

    @property
    def template_dir(self) -> Path | None:
        """The folder whose chat_template the run trained with (the adapter or model folder written at save)."""
        return self.tuned_path


def read_adapter_base(adapter: Path) -> str | None:
    """The base model an adapter was trained on (adapter_config.json's base_model_name_or_path)."""
    try:
        data = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    base = data.get("base_model_name_or_path")
    return base if isinstance(base, str) and base else None


def is_adapter_dir(path: Path) -> bool:
    """Whether ``path`` is a saved PEFT adapter folder."""
    return (path / "adapter_config.json").is_file()


def from_run(run_dir: str | Path) -> ModelSource:
    """The source of a finished (or aborted, with saved weights) training run."""
    run = RunDir(Path(run_dir).expanduser())
    if not run.path.is_dir():
        raise SourceError(f"{run_dir}: no such run directory")
    if not run.exists():
        raise SourceError(f"{run_dir}: not a run directory (no config.yaml)")
    try:
        config = run.config()
    except ConfigError as exc:
        raise SourceError(f"{run.config_file}: {exc}") from None
    weights = run.final_weights()
    if weights is None:
        state = run.status().get("state", "unknown")
        raise SourceError(f"run {run.run_id} has no saved adapter or model yet (state: {state}); wait for it to finish")
    adapter = weights if is_adapter_dir(weights) else None
    return ModelSource(
        model=config.model, adapter=adapter, weights=None if adapter else weights,
        template=config.template if config.stage != "pt" else "auto", quantization=config.quantization,
        trust_remote_code=config.trust_remote_code, run=run, run_config=config,
    )


def from_paths(model: str | None, adapter: str | None, template: str = "auto", trust_remote_code: bool = False) -> ModelSource:
    """The source named by a base model and/or an adapter folder (the adapter names its base when model is None)."""
    adapter_path = Path(adapter).expanduser().resolve() if adapter else None
    if adapter_path is not None:
        if not adapter_path.is_dir():
            raise SourceError(f"adapter {adapter}: no such folder")
        if not is_adapter_dir(adapter_path):
            raise SourceError(f"adapter {adapter}: not a PEFT adapter folder (no adapter_config.json)")
        model = model or read_adapter_base(adapter_path)
        if not model:
            raise SourceError(f"adapter {adapter}: its adapter_config.json names no base model; give --model")
    if not model:
        raise SourceError("give a training run (--run RUN_DIR) or a model (--model M, optionally with --adapter A)")
    return ModelSource(model=model, adapter=adapter_path, template=template, trust_remote_code=trust_remote_code)


def resolve_source(
    run: str | None = None, model: str | None = None, adapter: str | None = None, template: str = "auto",
    trust_remote_code: bool = False,
) -> ModelSource:
    """A run directory, or a model and/or adapter, as a ModelSource (SourceError on bad input)."""
    if run and (model or adapter):
        raise SourceError("give either a run (--run) or a model/adapter (--model/--adapter), not both")
    if run:
        source = from_run(run)
        if template != "auto":
            source.template = template
        return source
    return from_paths(model, adapter, template, trust_remote_code)
