"""Benchmark tasks through lm-evaluation-harness's Python API: an HF model plus (for the fine-tuned side) its
peft adapter, registered task names or local task YAML files, with a quick mode (``limit`` examples per task).

Tasks whose data lives on the Hugging Face hub fail with a one-line offline message when the hub cannot be
reached; local tasks (``dataset_path: json`` with local ``data_files``) work offline.
"""

from __future__ import annotations

import difflib
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tunelab.core.eval_config import EvalConfig

log = logging.getLogger(__name__)
_OFFLINE_HINTS = ("offline", "couldn't reach", "connectionerror", "connection error", "name resolution", "getaddrinfo", "max retries")


class BenchError(ValueError):
    """A benchmark task that cannot run here; the message names the task and why."""


def task_specs(tasks: list[str]) -> list[str]:
    """Task names and YAML paths; a folder expands to the task YAML files inside it."""
    specs: list[str] = []
    for task in tasks:
        path = Path(task).expanduser()
        if path.is_dir():
            found = sorted(str(p.resolve()) for p in path.glob("*.y*ml"))
            if not found:
                raise BenchError(f"task folder {task}: holds no .yaml task files")
            specs += found
        elif path.suffix in (".yaml", ".yml"):
            if not path.is_file():
                raise BenchError(f"task file {task}: no such file")
            specs.append(str(path.resolve()))
        else:
            specs.append(task)
    return specs


def task_manager(specs: list[str]) -> Any:
    """lm-eval's TaskManager; the built-in task index is scanned only when a spec is a registered name."""
    from lm_eval.tasks import TaskManager

    named = [s for s in specs if not s.endswith((".yaml", ".yml"))]
    manager = TaskManager(include_defaults=bool(named))
    unknown = [s for s in named if s not in manager.all_tasks]
    if unknown:
        hints = {s: difflib.get_close_matches(s, manager.all_tasks, n=3) for s in unknown}
        detail = "; ".join(f"{s!r}" + (f" (did you mean {', '.join(h)}?)" if h else "") for s, h in hints.items())
        raise BenchError(f"unknown lm-eval task {detail}; give a registered task name or a local task YAML file")
    return manager


def run_bench(
    cfg: EvalConfig, pretrained: str, peft: str | None, tokenizer: str, device: str, dtype: str
) -> dict[str, Any]:
    """lm-eval results (with per-sample logs) for one HF model (plus adapter); BenchError for offline or unknown tasks."""
    from lm_eval.models.huggingface import HFLM

    return run_tasks(cfg, lambda: HFLM(
        pretrained=pretrained, peft=peft, tokenizer=tokenizer, device=device, dtype=dtype, batch_size=cfg.batch_size,
        trust_remote_code=cfg.trust_remote_code,
    ))


def run_tasks(cfg: EvalConfig, make_lm: Callable[[], Any]) -> dict[str, Any]:
    """lm-eval results for the model ``make_lm`` builds (after the tasks are known to load)."""
    from lm_eval import simple_evaluate

    specs = task_specs(cfg.tasks)
    manager = task_manager(specs)
    _guard_offline(manager.load, specs)  # fail before loading any model when task data cannot be had
    lm = make_lm()
    return _guard_offline(
        simple_evaluate, model=lm, tasks=specs, task_manager=manager, limit=cfg.limit, num_fewshot=cfg.num_fewshot,
        log_samples=True, random_seed=cfg.seed, numpy_random_seed=cfg.seed, torch_random_seed=cfg.seed,
        fewshot_random_seed=cfg.seed, bootstrap_iters=max(cfg.bootstrap, 0), apply_chat_template=cfg.chat_template,
    ) or {}


def _guard_offline(function: Any, *args: Any, **kwargs: Any) -> Any:
    """Call ``function``; a failure to reach the hub becomes a one-line BenchError."""
    try:
        return function(*args, **kwargs)
    except Exception as exc:
        text = f"{type(exc).__name__}: {exc}"
        if any(hint in text.lower() for hint in _OFFLINE_HINTS):
            raise BenchError(
                f"benchmark task data must be downloaded from the Hugging Face hub, which is not reachable here "
                f"(offline): {text.splitlines()[0][:300]}. Use a local task YAML (dataset_path: json with local data_files)"
            ) from None
        raise


def _metrics(task_result: dict[str, Any], names: set[str]) -> dict[str, tuple[float, float | None]]:
    """metric,filter -> (value, stderr) from one task's results (only the task's declared metrics)."""
    out = {}
    for key, value in task_result.items():
        if key.split(",")[0] not in names or not isinstance(value, (int, float)):
            continue
        stderr = task_result.get(key.replace(",", "_stderr,", 1))
        out[key] = (float(value), float(stderr) if isinstance(stderr, (int, float)) and math.isfinite(stderr) else None)
    return out


def _per_sample(samples: list[dict[str, Any]], metric_key: str) -> dict[int, float]:
    metric, _, filt = metric_key.partition(",")
    values = {}
    for sample in samples:
        if sample.get("filter", filt) != filt:
            continue
        value = sample.get(metric)
        if isinstance(value, (int, float, bool)):
            values[int(sample["doc_id"])] = float(value)
    return values


def bench_rows(tuned: dict[str, Any], base: dict[str, Any] | None) -> list[dict[str, Any]]:
    """One row per task metric: values and lm-eval's stderr for each side, the delta and its stderr.

    The delta's stderr is paired (std of per-example differences / sqrt(n)) where lm-eval logged per-example
    values for a mean metric; otherwise sqrt(se_base^2 + se_tuned^2), which treats the two as independent.
    """
    rows = []
    for task, result in tuned.get("results", {}).items():
        base_result = (base or {}).get("results", {}).get(task, {})
        better = tuned.get("higher_is_better", {}).get(task, {})
        for key, (value, stderr) in _metrics(result, set(better)).items():
            base_value, base_stderr = _metrics(base_result, set(better)).get(key, (None, None)) if base else (None, None)
            delta_se, method = None, "lm-eval stderr"
            if base_value is not None:
                delta_se, method = _delta_stderr(tuned, base or {}, task, key, stderr, base_stderr)
            name = f"{task}/{key.replace(',none', '')}"
            rows.append({
                "name": name, "base": base_value, "tuned": value,
                "delta": value - base_value if base_value is not None else None, "base_stderr": base_stderr,
                "tuned_stderr": stderr, "delta_stderr": delta_se, "n": tuned.get("n-samples", {}).get(task, {}).get("effective"),
                "stderr_method": method, "higher_is_better": bool(better.get(key.split(",")[0], True)),
            })
    return rows


def _delta_stderr(tuned: dict, base: dict, task: str, key: str, se_t: float | None, se_b: float | None) -> tuple[float | None, str]:
    samples_t = _per_sample(tuned.get("samples", {}).get(task, []), key)
    samples_b = _per_sample(base.get("samples", {}).get(task, []), key)
    common = sorted(set(samples_t) & set(samples_b))
    values = [samples_t[i] for i in common]
    if len(common) > 1 and abs(float(np.mean(values)) - float(tuned["results"][task][key])) < 1e-9:
        diffs = np.array([samples_t[i] - samples_b[i] for i in common])
        return float(diffs.std(ddof=1) / math.sqrt(len(diffs))), "lm-eval stderr; delta: paired over examples"
    if se_t is not None and se_b is not None:
        return math.sqrt(se_t**2 + se_b**2), "lm-eval stderr; delta: independent (sqrt of summed variances)"
    return None, "lm-eval stderr"
