"""GRPO/RLOO reward functions: the built-ins, user functions from ``path.py:function``, and the checks around them.

Pure Python (no torch). A reward function has trl's signature ``f(prompts, completions, **kwargs) -> list[float |
None]``: one score per completion; a completion is a string or, for chat prompts, ``[{"role": "assistant",
"content": ...}]``; the dataset's other columns (e.g. ``answer``) arrive as keyword lists, one value per completion.
"""

from __future__ import annotations

import ast
import asyncio
import importlib.util
import inspect
import logging
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

RewardFn = Callable[..., Any]  # (prompts, completions, **columns) -> list[float | None]
BUILTINS = ("exact_answer", "think_format", "regex:PATTERN", "length:N")


class RewardError(ValueError):
    """A reward function raised or returned something other than one number per completion."""


def completion_text(completion: Any) -> str:
    """The text of a completion: a string, or the content of trl's assistant-message list."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list):
        return "".join(str(m.get("content") or "") for m in completion if isinstance(m, dict))
    if isinstance(completion, dict):
        return str(completion.get("content") or "")
    return str(completion)


# -- built-ins ---------------------------------------------------------------------------------------------------

_THINK = re.compile(r"^\s*<think>(.+?)</think>\s*(\S.*)$", re.S)
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
_NUMBER = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?|[-+]?\.\d+")


def final_answer(text: str) -> str:
    """The answer part of a completion: after a think block, the last ``\\boxed{}``, else the last number, else the
    last line."""
    if "</think>" in text:
        text = text.rsplit("</think>", 1)[1]
    boxed = _BOXED.findall(text)
    if boxed:
        return boxed[-1].strip()
    numbers = _NUMBER.findall(text)
    if numbers:
        return numbers[-1]
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def normalise_answer(value: Any) -> str:
    """An answer as a comparable string: numbers canonical ("38.0", "= 38.", "1,000" -> "38", "1000"), other text
    trimmed, lower-cased and without a trailing full stop."""
    text = str(value).strip().strip("$").strip()
    text = text.lstrip("=").strip().rstrip(".").strip()
    number = text.replace(",", "")
    try:
        parsed = float(number)
    except ValueError:
        return " ".join(text.lower().split())
    if not math.isfinite(parsed):
        return number.lower()
    return str(int(parsed)) if parsed == int(parsed) else repr(parsed)


def exact_answer(prompts: list, completions: list, answer: list | None = None, **kwargs: Any) -> list[float]:
    """1.0 when the completion's final answer equals the row's ``answer`` (numbers compared numerically), else 0.0."""
    if answer is None:
        raise RewardError("exact_answer needs an 'answer' column in the dataset")
    return [
        float(normalise_answer(final_answer(completion_text(c))) == normalise_answer(a))
        for c, a in zip(completions, answer, strict=True)
    ]


def think_format(prompts: list, completions: list, **kwargs: Any) -> list[float]:
    """1.0 for a non-empty ``<think>...</think>`` block followed by an answer, else 0.0."""
    return [float(bool(_THINK.match(completion_text(c)))) for c in completions]


def regex_reward(pattern: str) -> RewardFn:
    """1.0 when the completion matches ``pattern`` (re.search), else 0.0."""
    compiled = re.compile(pattern)

    def regex(prompts: list, completions: list, **kwargs: Any) -> list[float]:
        return [float(compiled.search(completion_text(c)) is not None) for c in completions]

    return regex


def length_reward(target: int) -> RewardFn:
    """Closer to ``target`` words scores higher: 1 - |words - target| / max(target, words), in [0, 1]."""

    def length(prompts: list, completions: list, **kwargs: Any) -> list[float]:
        scores = []
        for c in completions:
            words = len(completion_text(c).split())
            scores.append(1.0 - abs(words - target) / max(target, words, 1))
        return scores

    return length


# -- specs -------------------------------------------------------------------------------------------------------

def _bad(spec: str, why: str) -> ValueError:
    return ValueError(
        f"reward_funcs: {spec!r} {why}; valid choices: {', '.join(BUILTINS)}, or path/to/file.py:function"
    )


def _split_file_spec(spec: str) -> tuple[str, str] | None:
    """(path, function) for a ``path.py:function`` spec, else None."""
    path, sep, function = spec.rpartition(":")
    if sep and path.endswith(".py"):
        return path, function
    return None


def check_spec(spec: str, base: Path | None = None) -> str:
    """Validate one reward spec without running user code; returns it normalised (a user file's path made
    absolute). ValueError naming the value and the valid choices."""
    spec = spec.strip()
    kind, sep, arg = spec.partition(":")
    if spec in ("exact_answer", "think_format"):
        return spec
    if kind == "regex" and sep:
        try:
            re.compile(arg)
        except re.error as exc:
            raise _bad(spec, f"is not a valid regular expression ({exc})") from None
        return spec
    if kind == "length" and sep:
        if not arg.isdigit() or int(arg) < 1:
            raise _bad(spec, "needs a whole number of words >= 1 after 'length:'")
        return spec
    file_spec = _split_file_spec(spec)
    if file_spec is None:
        raise _bad(spec, "is not a known reward function")
    path, function = file_spec
    resolved = Path(path).expanduser()
    if not resolved.is_absolute():
        resolved = (base or Path.cwd()) / resolved
    if not resolved.is_file():
        raise _bad(spec, f"names a file that does not exist ({resolved})")
    if not function.isidentifier():
        raise _bad(spec, f"needs a function name after ':' (got {function!r})")
    if function not in _top_level_names(resolved):
        raise _bad(spec, f"names no top-level function {function!r} in {resolved}")
    return f"{resolved.resolve()}:{function}"


def _top_level_names(path: Path) -> set[str]:
    """Names a Python file defines at its top level (read with ast, not executed)."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (SyntaxError, UnicodeDecodeError) as exc:
        raise ValueError(f"reward_funcs: {path} is not valid Python ({exc})") from None
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def _load_user_function(path: str, function: str) -> RewardFn:
    """Import ``function`` from the file at ``path`` (its own module name, so two files never collide)."""
    name = f"tunelab_reward_{abs(hash(path)):x}_{Path(path).stem}"
    module = sys.modules.get(name)
    if module is None:
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            del sys.modules[name]
            log.exception("importing reward file %s failed", path)
            raise RewardError(f"reward_funcs: importing {path} failed: {type(exc).__name__}: {_one_line(exc)}") from None
    fn = getattr(module, function, None)
    if not callable(fn):
        raise RewardError(f"reward_funcs: {path}:{function} is not a callable function")
    return fn


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300] or type(exc).__name__


def _base_name(spec: str) -> str:
    file_spec = _split_file_spec(spec)
    if file_spec:
        return file_spec[1]
    return {"regex": "regex", "length": "length"}.get(spec.partition(":")[0], spec)


def build_function(spec: str) -> RewardFn:
    """The reward function a (checked) spec names."""
    kind, _, arg = spec.partition(":")
    if spec == "exact_answer":
        return exact_answer
    if spec == "think_format":
        return think_format
    if kind == "regex":
        return regex_reward(arg)
    if kind == "length":
        return length_reward(int(arg))
    path, function = _split_file_spec(spec)  # type: ignore[misc]
    return _load_user_function(path, function)


class CheckedReward:
    """A reward function wrapped so that a crash or a wrong result fails the run with one line naming it.

    ``__name__`` is the name trl logs it under (``rewards/<name>/mean``)."""

    def __init__(self, spec: str, fn: RewardFn, name: str):
        self.spec, self.fn, self.__name__ = spec, fn, name

    def __call__(self, prompts: list, completions: list, **kwargs: Any) -> list[float | None]:
        try:
            scores = self.fn(prompts=prompts, completions=completions, **kwargs)
            if inspect.isawaitable(scores):  # an async user function
                scores = asyncio.run(scores)  # type: ignore[arg-type]
        except RewardError:
            raise
        except Exception as exc:
            log.exception("reward function %r (%s) raised", self.__name__, self.spec)
            raise RewardError(
                f"reward function {self.__name__!r} ({self.spec}) raised {type(exc).__name__}: {_one_line(exc)}"
            ) from None
        return self._checked(scores, len(completions))

    def _checked(self, scores: Any, expected: int) -> list[float | None]:
        where = f"reward function {self.__name__!r} ({self.spec})"
        if isinstance(scores, (str, bytes, dict)) or not hasattr(scores, "__len__"):
            raise RewardError(f"{where} returned {type(scores).__name__}; expected a list of {expected} numbers")
        scores = list(scores)
        if len(scores) != expected:
            raise RewardError(f"{where} returned {len(scores)} scores for {expected} completions")
        out: list[float | None] = []
        for index, score in enumerate(scores):
            if score is None:
                out.append(None)
            elif isinstance(score, (int, float)) and not isinstance(score, bool) and math.isfinite(score):
                out.append(float(score))
            else:
                raise RewardError(f"{where} returned {score!r} for completion {index}; expected a finite number or None")
        return out


def build_rewards(specs: list[str]) -> list[CheckedReward]:
    """The checked reward functions of a run, with unique names (a second ``regex`` logs as ``regex_2``)."""
    out: list[CheckedReward] = []
    seen: dict[str, int] = {}
    for spec in specs:
        base = _base_name(spec)
        seen[base] = seen.get(base, 0) + 1
        name = base if seen[base] == 1 else f"{base}_{seen[base]}"
        out.append(CheckedReward(spec, build_function(spec), name))
    return out

