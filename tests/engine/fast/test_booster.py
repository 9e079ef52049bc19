"""Which booster a run gets, and why (no model weights needed: only the model's config is read)."""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import pytest

from tunelab.core.config import ConfigError, RunConfig
from tunelab.engine.booster import choose_booster, fast_options


def model(kind: str = "llama") -> SimpleNamespace:
    return SimpleNamespace(config=SimpleNamespace(model_type=kind))


def test_auto_falls_back_with_the_reason() -> None:
    assert choose_booster(RunConfig(), model("gemma")).reason.startswith("auto: plain transformers (model type 'gemma'")
    for moe in ("qwen3_moe", "mixtral"):  # MoE families are not on the fast path: auto says so, on any machine
        choice = choose_booster(RunConfig(), model(moe))
        assert choice.mode == "none" and f"model type '{moe}' (the fast path covers llama" in choice.reason
    assert "DoRA" in choose_booster(RunConfig(use_dora=True), model()).reason
    assert "method 'full'" in choose_booster(RunConfig(method="full"), model()).reason
    assert choose_booster(RunConfig(booster="none"), model()).mode == "none"


def test_auto_on_this_machine_follows_the_gpu() -> None:
    import torch

    choice = choose_booster(RunConfig(), model())
    assert choice.mode == ("fast" if torch.cuda.is_available() else "none")


def test_explicit_fast_refuses_unsupported_models() -> None:
    with pytest.raises(ConfigError, match="does not support model type 'gemma'"):
        choose_booster(RunConfig(booster="fast"), model("gemma"))
    assert choose_booster(RunConfig(booster="fast"), model("qwen2")).mode == "fast"
    for kind in ("qwen3", "gemma3_text"):
        assert choose_booster(RunConfig(booster="fast"), model(kind)).mode == "fast"
    with pytest.raises(ConfigError, match="does not support model type 'qwen3_moe'"):
        choose_booster(RunConfig(booster="fast"), model("qwen3_moe"))


def test_fast_options_follow_the_config() -> None:
    options = fast_options(RunConfig(gradient_checkpointing=True, fast_kernels=False))
    assert options.checkpointing == "offload" and options.kernels is False
    assert fast_options(RunConfig()).checkpointing == "none"
    assert fast_options(RunConfig(gradient_checkpointing=True, fast_checkpointing="mlp")).checkpointing == "mlp"
    with pytest.raises(ValueError):
        RunConfig(fast_checkpointing="sometimes")


@pytest.mark.skipif(importlib.util.find_spec("liger_kernel") is not None, reason="liger-kernel is installed")
def test_liger_without_the_package_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="liger-kernel"):
        choose_booster(RunConfig(booster="liger"), model())
