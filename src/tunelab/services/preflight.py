"""Checks a run config passes before a trainer process starts (no torch): shared by the CLI and the web UI."""

from __future__ import annotations

from pathlib import Path

from tunelab.core.config import ConfigError, RunConfig
from tunelab.core.datasets import check_stage, load_dataset_registry, validate_file
from tunelab.core.templates import registry


def preflight(config: RunConfig) -> None:
    """Template name, model folder and every local dataset row. Raises ConfigError/DataError/UnknownTemplate."""
    if config.template != "auto":
        registry().get(config.template)
    model = config.model
    if model != "demo" and model.startswith(("/", "./", "../", "~")) and not Path(model).expanduser().is_dir():
        raise ConfigError(f"model: {model!r} is not a folder (give a local model folder, a hub id or 'demo')")
    datasets = load_dataset_registry(config.dataset_dir)
    for name in config.dataset:
        name, spec, local = datasets.resolve(name)
        check_stage(name, spec, config.stage)
        if local is not None:
            validate_file(name, spec, local).raise_if_bad()
