"""Turn what a user typed (model id or folder, adapter folders, run directories) into a ModelSpec, and open
the engine that serves it. Engines (torch, transformers, peft, vllm) are imported only when opened."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from tunelab.core.generation import InferenceError
from tunelab.core.rundir import RunDir
from tunelab.core.serving import AdapterSpec, EngineOptions, ModelSpec

log = logging.getLogger(__name__)

_NAME = re.compile(r"[^A-Za-z0-9._-]+")
DEMOS = ("demo", "demo-vlm")  # embedded models, built on first use


def _looks_like_path(text: str) -> bool:
    return text.startswith(("/", "./", "../", "~")) or text.count("/") > 1 or text.endswith("/")


def _run_base_model(run: RunDir) -> str | None:
    try:
        return run.config().model
    except Exception:  # an unreadable config: fall back to adapter_config.json
        return None


def _adapter_info(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InferenceError(f"adapter: cannot read {folder / 'adapter_config.json'}: {exc}") from None


def resolve_adapter(text: str) -> AdapterSpec:
    """'[name=]PATH' where PATH is an adapter folder (adapter_config.json) or a run directory with adapter/."""
    name, _, raw = text.partition("=") if "=" in text and not Path(text).exists() else ("", "", text)
    path = Path(raw).expanduser()
    if not path.exists():
        raise InferenceError(f"adapter: {raw!r} does not exist (give an adapter folder or a run directory)")
    run_base = None
    if (path / "config.yaml").is_file() and not (path / "adapter_config.json").is_file():
        run = RunDir(path)
        if not (run.adapter_dir / "adapter_config.json").is_file():
            if (run.model_dir / "config.json").is_file():
                raise InferenceError(f"adapter: run {raw!r} saved a full model, not an adapter; use --model {run.model_dir}")
            raise InferenceError(f"adapter: run {raw!r} has no saved adapter yet (no {run.adapter_dir.name}/adapter_config.json)")
        run_base, default_name, path = _run_base_model(run), run.run_id, run.adapter_dir
    elif (path / "adapter_config.json").is_file():
        parent_is_run = path.name == "adapter" and (path.parent / "config.yaml").is_file()
        default_name = path.parent.name if parent_is_run else path.name
        run_base = _run_base_model(RunDir(path.parent)) if parent_is_run else None
    else:
        raise InferenceError(f"adapter: {raw!r} is neither an adapter folder (adapter_config.json) nor a run directory")
    info = _adapter_info(path)
    if info.get("task_type") == "SEQ_CLS":
        raise InferenceError(
            f"adapter: {raw!r} is a reward model (a score head, stage rm), not a chat model: evaluate it with "
            "`tunelab eval --run RUN` (metrics=preference)"
        )
    base = run_base or info.get("base_model_name_or_path")
    return AdapterSpec(name=_clean_name(name or default_name), path=str(path.resolve()), base_model=base, rank=int(info.get("r") or 16))


def _clean_name(name: str) -> str:
    return _NAME.sub("-", name).strip("-") or "adapter"


def resolve_model(model: str) -> tuple[str, str, list[AdapterSpec]]:
    """(path to load, served name, adapters implied by a run directory) for a model id, folder or run dir."""
    path = Path(model).expanduser()
    if model in DEMOS:
        from tunelab.engine.model import resolve_model_path

        return resolve_model_path(model), model, []
    if path.is_dir():
        run = RunDir(path)
        if run.exists() and not (path / "config.json").is_file():
            if (run.model_dir / "config.json").is_file():
                return str(run.model_dir.resolve()), run.run_id, []
            if (run.adapter_dir / "adapter_config.json").is_file():
                adapter = resolve_adapter(str(path))
                base_path, base_name, _ = resolve_model(adapter.base_model or "")
                return base_path, base_name, [adapter]
            raise InferenceError(f"model: run {model!r} has no saved model or adapter yet")
        if not (path / "config.json").is_file():
            raise InferenceError(f"model: {model!r} is a folder without config.json (not a transformers model)")
        return str(path.resolve()), _clean_name(path.resolve().name), []
    if not model or _looks_like_path(model):
        raise InferenceError(f"model: {model!r} is not a folder here (give a model folder, a hub id or 'demo')")
    return model, model, []


def resolve_spec(model: str | None, adapters: list[str] | None = None, template: str = "auto") -> ModelSpec:
    """The ModelSpec for --model and --adapter arguments; the base model defaults to the first adapter's."""
    specs = [resolve_adapter(a) for a in adapters or []]
    warnings: list[str] = []
    if not model:
        if not specs or not specs[0].base_model:
            raise InferenceError("model: give --model (a model folder, hub id or 'demo'), or an adapter that records its base")
        model = specs[0].base_model
    path, name, implied = resolve_model(model)
    specs = implied + specs
    for adapter in specs:
        if adapter.base_model and not _same_model(adapter.base_model, model, path):
            warnings.append(f"adapter '{adapter.name}' was trained on {adapter.base_model!r}, now served on {model!r}")
    _dedupe(name, specs)
    if template != "auto":
        from tunelab.core.templates import registry

        registry().get(template)  # UnknownTemplate names the valid choices
    spec = ModelSpec(model=model, path=path, name=name, adapters=specs, template=template, warnings=warnings)
    for warning in warnings:
        log.warning(warning)
    return spec


def _same_model(recorded: str, model: str, path: str) -> bool:
    if recorded in (model, path):
        return True
    for name, folder in _demo_dirs().items():
        if name in (recorded, model):
            return {recorded, path} <= {folder, name} or {recorded, model} <= {folder, name}
    return Path(recorded).expanduser().resolve() == Path(path).resolve()


def _demo_dirs() -> dict[str, str]:
    """The embedded demo models' names and folders (built or not)."""
    from tunelab.engine.demo import demo_model_dir
    from tunelab.engine.vlm_demo import demo_vlm_dir

    return {"demo": str(demo_model_dir()), "demo-vlm": str(demo_vlm_dir())}


def _dedupe(base_name: str, adapters: list[AdapterSpec]) -> None:
    taken = {base_name}
    for adapter in adapters:
        name, n = adapter.name, 2
        while name in taken:
            name, n = f"{adapter.name}-{n}", n + 1
        adapter.name = name
        taken.add(name)


def open_engine(model: str | None, adapters: list[str] | None, options: EngineOptions, template: str = "auto") -> Any:
    """Load the model and adapters with the chosen engine (the heavy imports happen here).

    With the ``openai`` engine nothing is loaded: ``model`` and ``adapters`` are names the server serves."""
    options.validate()
    if options.engine == "openai":
        from tunelab.engine.inference.remote import OpenAIEngine

        engine = OpenAIEngine.connect(options.base_url or "", options.api_key)
        for name in [n for n in [model, *(adapters or [])] if n]:
            engine.check_model(name)
        return engine
    spec = resolve_spec(model, adapters, template)
    if options.engine == "hf":
        from tunelab.engine.inference.hf import HFEngine

        return HFEngine(spec, options)
    from tunelab.engine.inference.vllm_engine import open_vllm

    return open_vllm(spec, options)


def default_target(engine: Any, model: str | None = None, adapters: list[str] | None = None) -> str:
    """The served name a chat talks to first: the first adapter if any, else the base model."""
    spec = getattr(engine, "spec", None)
    if spec is not None:
        return spec.adapters[0].name if spec.adapters else spec.name
    return (adapters[0] if adapters else None) or model or engine.models()[0].id
