"""The estimate for a run config: its model's shape, the GPU it will get and its data's size (no torch).

Shared by `tunelab estimate`, `tunelab train --estimate`, the Train tab's estimate box and the trainer's
``estimate`` event.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from tunelab.core.config import RunConfig
from tunelab.core.datasets import DataError, DatasetSpec, load_dataset_registry, validate_file
from tunelab.core.estimate import DataSize, Device, Estimate, cpu_device, estimate
from tunelab.core.gpus import CPU, by_name, gpu_class, host_memory_gib
from tunelab.core.model_shape import ModelShape, load_shape, shape_from_config
from tunelab.core.schema import ConfigError
from tunelab.core.token_lengths import guessed_lengths, load_lengths
from tunelab.services.gpus import Gpu


def model_shape(model: str) -> ModelShape:
    """The shape of a model folder, a cached hub id, or a built-in demo model ('demo', 'demo-vlm'): its built
    folder's config.json, else the shape it will be built with (nothing is built here: no torch)."""
    if model in ("demo", "demo-vlm"):
        from tunelab.engine.demo import DEMO_SHAPE, demo_model_dir
        from tunelab.engine.vlm_demo import demo_vlm_dir

        built = (demo_model_dir() if model == "demo" else demo_vlm_dir()) / "config.json"
        if built.is_file():
            return shape_from_config(json.loads(built.read_text()))
        # the demo VLM's language model is the demo model plus one <image> token (its vision tower is not counted)
        return shape_from_config({**DEMO_SHAPE, "model_type": "llama", "vocab_size": 4096 + (model == "demo-vlm")})
    return load_shape(model)


def device_for(choice: str | None = None, gpus: list[Gpu] | None = None) -> Device:
    """The device to estimate for: ``None``/'auto' = the first visible GPU, else the CPU; a GPU index ('0',
    'GPU 1'); or a class of the table ('H100', 'RTX 4090', 'CPU'). ``gpus``: the GPUs here (default: nvidia-smi's).
    ConfigError for anything else."""
    from tunelab.core.gpus import class_names
    from tunelab.services.gpus import detect_gpus

    wanted = (choice or "auto").strip()
    if wanted.lower() == "cpu":
        return cpu_device()
    gpus = detect_gpus() if gpus is None else gpus
    index = wanted.removeprefix("GPU ").split(":")[0].strip()
    if wanted.lower() == "auto" or index.isdigit():
        found = gpus[0] if wanted.lower() == "auto" and gpus else next((g for g in gpus if g.index == index), None)
        if found is not None:
            cls = gpu_class(found.name)
            memory = found.memory_mib / 1024 if found.memory_mib else cls.memory_gib
            return Device(f"GPU {found.index}: {found.name or cls.name}", cls, round(memory, 1))
        if wanted.lower() == "auto":
            return device_for(CPU, gpus)
        raise ConfigError(f"gpu: no GPU {index} here (visible: {', '.join(g.index for g in gpus) or 'none'})")
    named = by_name(wanted)
    if named is None:
        raise ConfigError(f"gpu: {wanted!r} is not valid; valid choices: auto, a GPU index, {', '.join(class_names())}")
    memory = host_memory_gib() if named.name == CPU else named.memory_gib
    return Device(named.name, named, round(memory, 1))


def data_size(config: RunConfig) -> DataSize | None:
    """Examples and per-example token lengths of the run's datasets: measured by `tunelab data check --model`
    when it ran on the same files, else counted from characters. None when a dataset cannot be read here (hub)."""
    try:
        registry = load_dataset_registry(config.dataset_dir)
    except DataError:
        return None
    lengths: list[int] = []
    sources = set()
    for name in config.dataset:
        try:
            name, spec, local = registry.resolve(name)
        except DataError:
            return None
        if local is None:
            return None
        measured, how = load_lengths(local, spec, config.model, config.template), "measured by `tunelab data check`"
        if measured is None:
            try:
                stat = local.stat()
                measured = list(_guessed(name, spec.model_dump_json(), str(local), stat.st_mtime_ns, stat.st_size))
            except (OSError, DataError):  # a missing or unreadable file: memory and speed still, no epoch time
                return None
            how = "estimated from characters"
        if config.max_samples:
            measured = measured[: config.max_samples]
        lengths.extend(measured)
        sources.add(how)
    held = config.val_size if config.val_size >= 1 else round(len(lengths) * config.val_size)
    lengths = lengths[: max(0, len(lengths) - int(held))]
    if not lengths:
        return None
    return DataSize(len(lengths), tuple(lengths), sum(lengths) / len(lengths), "; ".join(sorted(sources)))


@lru_cache(maxsize=32)
def _guessed(name: str, spec_json: str, path: str, mtime_ns: int, size: int) -> tuple[int, ...]:
    """One file's token lengths counted from characters (cached per file version: the Train tab asks often)."""
    report = validate_file(name, DatasetSpec.model_validate_json(spec_json), Path(path))
    return tuple(guessed_lengths(report.examples))


def estimate_config(config: RunConfig, device: Device | str | None = None, data: DataSize | None | bool = True) -> Estimate:
    """The estimate for ``config`` (``data=True``: size the datasets here; ``False``/None: no epoch time)."""
    shape = model_shape(config.model)
    target = device if isinstance(device, Device) else device_for(device)
    size = data_size(config) if data is True else (data or None)
    return estimate(config, shape, target, size)


def report_lines(est: Estimate, shape_label: str = "") -> list[str]:
    """The estimate as a few readable lines (CLI and logs)."""
    lines = [f"estimate: {est.line()} -- {est.verdict()}"]
    if shape_label:
        lines.append(f"  model: {shape_label}; path: {est.path} ({est.path_reason})")
    lines.append(f"  peak GPU memory: {est.reserved_gib:.1f} GiB reserved ({est.allocated_gib:.1f} allocated) "
                 f"+ {est.needed_gib - est.reserved_gib:.1f} outside the allocator" if est.device != CPU
                 else f"  peak RAM: {est.needed_gib:.1f} GiB")
    lines.append("  parts (GiB): " + ", ".join(f"{k} {v:.2f}" for k, v in est.parts_gib.items()))
    if est.pinned_host_gib:
        lines.append(f"  pinned host memory for offloaded activations: {est.pinned_host_gib:.1f} GiB")
    if est.steps_per_epoch:
        lines.append(f"  epoch: {est.epoch_tokens:,} tokens, {est.steps_per_epoch:,} steps of {est.step_s:.2f} s "
                     f"({est.data_source})")
    else:
        lines.append("  epoch: dataset size unknown here (hub dataset or unreadable file): no time per epoch")
    lines.extend(f"  note: {note}" for note in est.notes)
    return lines


def describe_model(model: str) -> str:
    """The shape's one-line label, or why there is none."""
    try:
        return model_shape(model).label()
    except ConfigError as exc:
        return str(exc)

