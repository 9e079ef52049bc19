"""Arguments shared by `tunelab chat` and `tunelab api`: what to serve, which engine, sampling controls."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tunelab.core.generation import SamplingParams
from tunelab.core.serving import DTYPES, ENGINES, EngineOptions


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--model, --adapter, --engine and engine options."""
    parser.add_argument("--model", help="model folder, hub id, 'demo', or a run directory (its adapter and base model)")
    parser.add_argument("--adapter", action="append", default=[], metavar="[NAME=]DIR",
                        help="LoRA adapter folder or run directory; repeat for several (each served under its name)")
    parser.add_argument("--engine", choices=list(ENGINES), default="hf", help="inference engine (default hf)")
    parser.add_argument("--template", default="auto", help="chat template family (default: the model's own / catalog)")
    parser.add_argument("--dtype", choices=DTYPES, default="auto", help="weights dtype (auto: fp32 on CPU, bf16 on GPU)")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow model code from the model folder")
    parser.add_argument("--base-url", help="openai engine: the server's base URL, e.g. http://host:8000/v1")
    parser.add_argument("--remote-api-key", help="openai engine: the server's API key (default $OPENAI_API_KEY)")
    parser.add_argument("--vllm-python", help="vllm engine: a Python with vLLM installed, to run `vllm serve` in "
                        "its own environment (default $TUNELAB_VLLM_PYTHON when vllm is not importable here)")
    parser.add_argument("--max-model-len", type=int, help="vllm engine: context length to reserve KV cache for")
    parser.add_argument("--runs-dir", help="on a GPU machine: the runs folder whose job queue hands out the GPU "
                        "(default ./runs or $TUNELAB_RUNS); the model waits there while jobs hold every GPU")


def add_sampling_arguments(parser: argparse.ArgumentParser, max_new_tokens: int = 256, temperature: float | None = None) -> None:
    """Sampling controls (``temperature``: this command's default, else SamplingParams')."""
    defaults = SamplingParams()
    group = parser.add_argument_group("sampling")
    group.add_argument("--temperature", type=float, default=defaults.temperature if temperature is None else temperature,
                       help="0 = greedy (default %(default)s)")
    group.add_argument("--top-p", type=float, default=defaults.top_p)
    group.add_argument("--top-k", type=int, default=defaults.top_k, help="0 = off")
    group.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    group.add_argument("--repetition-penalty", type=float, default=defaults.repetition_penalty)
    group.add_argument("--seed", type=int, help="sampling seed (reproducible answers)")
    group.add_argument("--stop", action="append", default=[], help="extra stop string; repeat for several")


def engine_options(args: argparse.Namespace) -> EngineOptions:
    """EngineOptions from parsed arguments (validated)."""
    options = EngineOptions(
        engine=args.engine, dtype=args.dtype, trust_remote_code=args.trust_remote_code, max_model_len=args.max_model_len,
        vllm_python=args.vllm_python, base_url=args.base_url,
        api_key=args.remote_api_key or os.environ.get("OPENAI_API_KEY"),
    )
    options.validate()
    return options


def sampling_params(args: argparse.Namespace) -> SamplingParams:
    """SamplingParams from parsed arguments (validated)."""
    return SamplingParams(
        temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, max_new_tokens=args.max_new_tokens,
        repetition_penalty=args.repetition_penalty, seed=args.seed, stop=args.stop,
    )


def open_from_args(args: argparse.Namespace) -> Any:
    """Load the engine the arguments describe."""
    from tunelab.services.inference import open_engine

    return open_engine(args.model, args.adapter, engine_options(args), args.template)


@contextmanager
def held_gpu(args: argparse.Namespace, holder: str, on_wait: Callable[[str], None]) -> Iterator[list[str]]:
    """The GPU the command loads its model on, held in the runs folder's job queue until the block ends (none for
    the openai engine, which loads nothing here); ``holder`` says who holds it to the jobs waiting for it."""
    if args.engine == "openai":
        yield []
        return
    from tunelab.services.holds import hold_gpus

    served = args.model or (args.adapter[0] if args.adapter else "model")
    with hold_gpus(f"{holder} {Path(served).name or served}", args.runs_dir, on_wait=on_wait) as devices:
        yield devices


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that are the user's to fix: printed as one line, exit 2."""
    from tunelab.core.generation import EngineCrashed, InferenceError
    from tunelab.core.templates import UnknownTemplate

    return (InferenceError, UnknownTemplate, EngineCrashed)
