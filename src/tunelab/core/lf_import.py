"""Read a LLaMA-Factory training YAML as a tunelab run config: keys renamed, values translated, the rest noted.

`tunelab train LF.yaml` runs such a file directly (the resolved config.yaml shows tunelab's names);
`tunelab import-config LF.yaml -o run.yaml` writes the translation. The key tables are data in
tunelab.core.key_aliases; template names resolve through templates/aliases/llamafactory.yaml.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from tunelab.core.config import RunConfig, parse_overrides, validate_config
from tunelab.core.key_aliases import CONVERTED, RENAMED, UNSUPPORTED
from tunelab.core.schema import ConfigError
from tunelab.core.templates import UnknownTemplate, registry

# Keys only a LLaMA-Factory file has: one of them marks the file as LLaMA-Factory's.
MARKERS = ("model_name_or_path", "finetuning_type", "per_device_train_batch_size", "num_train_epochs",
           "lr_scheduler_type", "do_train")
QUANT_BITS = {4: "4bit", 8: "8bit"}
ATTENTION = {"auto": "auto", "disabled": "eager", "sdpa": "sdpa", "fa2": "flash_attention_2"}

Converter = Callable[[Any, dict[str, Any], dict[str, Any], list[str]], None]


def is_llamafactory(data: dict[str, Any]) -> bool:
    """Whether a config mapping is written in LLaMA-Factory's key names."""
    return any(key in data for key in MARKERS)


def _precision(name: str) -> Converter:
    def convert(value: Any, src: dict, out: dict, notes: list[str]) -> None:
        if value:
            out["precision"] = name
    return convert


def _pure_bf16(value: Any, src: dict, out: dict, notes: list[str]) -> None:
    if value:
        out["dtype"] = out["precision"] = "bf16"


def _quantization_bit(value: Any, src: dict, out: dict, notes: list[str]) -> None:
    if value is None:
        return
    if value not in QUANT_BITS:
        raise ConfigError(f"quantization_bit: {value!r} is not valid; valid choices: 4, 8 (bitsandbytes)")
    out["quantization"] = QUANT_BITS[value]


def _quantization_method(value: Any, src: dict, out: dict, notes: list[str]) -> None:
    if value not in (None, "bnb", "bitsandbytes"):
        raise ConfigError(f"quantization_method: {value!r} is not available; valid choices: bnb (bitsandbytes)")


def _flash_attn(value: Any, src: dict, out: dict, notes: list[str]) -> None:
    if value not in ATTENTION:
        raise ConfigError(f"flash_attn: {value!r} is not valid; valid choices: {', '.join(ATTENTION)}")
    out["attn_implementation"] = ATTENTION[value]


def _liger(value: Any, src: dict, out: dict, notes: list[str]) -> None:
    if value:
        out["booster"] = "liger"


def _no_checkpointing(value: Any, src: dict, out: dict, notes: list[str]) -> None:
    out["gradient_checkpointing"] = not value


def _resume(value: Any, src: dict, out: dict, notes: list[str]) -> None:
    if value:
        out["resume"] = True
        notes.append(f"resume_from_checkpoint: {value!r} -> resume: true (continues from the last checkpoint "
                     "in output_dir)")


def _pref_loss(value: Any, src: dict, out: dict, notes: list[str]) -> None:
    if value in ("orpo", "simpo") and src.get("stage", "sft") == "dpo":
        out["stage"] = value
    elif value is not None and value != "sigmoid":
        out["dpo_loss"] = value  # validation lists the valid losses


def _deepspeed(value: Any, src: dict, out: dict, notes: list[str]) -> None:
    if not value:
        return
    path = Path(str(value)).expanduser()
    stage: int | None = None
    if path.is_file():
        try:
            stage = json.loads(path.read_text(encoding="utf-8")).get("zero_optimization", {}).get("stage")
        except (OSError, ValueError, AttributeError):
            raise ConfigError(f"deepspeed: {value!r} is not a DeepSpeed JSON config") from None
    else:
        found = re.search(r"z(?:ero)?_?(\d)", path.name)
        stage = int(found.group(1)) if found else None
    strategy = {0: "ddp", 1: "ddp", 2: "deepspeed_zero2", 3: "deepspeed_zero3"}.get(stage) if stage is not None else None
    if strategy is None:
        raise ConfigError(f"deepspeed: cannot tell the ZeRO stage of {value!r}; set strategy yourself "
                          "(valid choices: ddp, deepspeed_zero2, deepspeed_zero3)")
    out["strategy"] = strategy
    if "offload" in path.name and strategy != "ddp":
        out["offload"] = True
    if path.is_file() and strategy != "ddp":
        out["deepspeed_config"] = str(value)
    notes.append(f"deepspeed: {value} -> strategy: {strategy}" + (", offload: true" if out.get("offload") else "")
                 + ("" if path.is_file() else " (file not found here: tunelab generates the DeepSpeed config)")
                 + "; set nproc_per_node to the number of GPUs (LLaMA-Factory took it from torchrun)")


def _report_to(value: Any, src: dict, out: dict, notes: list[str]) -> None:
    names = value if isinstance(value, list) else [v.strip() for v in str(value).split(",")]
    kept = [n for n in names if n in ("tensorboard", "wandb", "mlflow")]
    dropped = [n for n in names if n not in kept and n not in ("none", "")]
    if dropped:
        notes.append(f"report_to: {', '.join(dropped)} not available (valid: tensorboard, wandb, mlflow); dropped")
    out["report_to"] = kept


def _template(value: Any, src: dict, out: dict, notes: list[str]) -> None:
    reg = registry()
    try:
        family = reg.get(str(value)).name
    except UnknownTemplate:
        out["template"] = value  # validation / preflight says why, with the stated reason
        return
    chosen = family
    model = out.get("model") or src.get("model_name_or_path")
    hit = reg.catalog.get(str(model).strip("/").lower()) if model else None
    if hit is not None and hit.template.name != family:
        chosen = "auto"
        notes.append(f"template: LLaMA-Factory's {value!r} is {family!r} here, but the catalog gives {model} "
                     f"{hit.template.name!r} (its official template) -> template: auto")
    elif family != value:
        notes.append(f"template: LLaMA-Factory's {value!r} -> {family!r}")
    out["template"] = chosen


CONVERTERS: dict[str, Converter] = {
    "bf16": _precision("bf16"), "fp16": _precision("fp16"), "pure_bf16": _pure_bf16,
    "quantization_bit": _quantization_bit, "quantization_method": _quantization_method,
    "flash_attn": _flash_attn, "enable_liger_kernel": _liger,
    "disable_gradient_checkpointing": _no_checkpointing, "resume_from_checkpoint": _resume,
    "pref_loss": _pref_loss, "deepspeed": _deepspeed, "report_to": _report_to, "template": _template,
}
assert set(CONVERTERS) == set(CONVERTED), "key_aliases.CONVERTED and lf_import.CONVERTERS must list the same keys"


def translate(data: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """LLaMA-Factory keys -> tunelab fields; returns the mapping and one note per dropped or changed key."""
    fields = RunConfig.model_fields
    out: dict[str, Any] = {}
    notes: list[str] = []
    if "disable_gradient_checkpointing" not in data:
        out["gradient_checkpointing"] = True
        notes.append("gradient_checkpointing: true (LLaMA-Factory's default)")
    ordered = sorted(data, key=lambda k: k == "template")  # the template choice looks at the model
    for key in ordered:
        value = data[key]
        if key in CONVERTERS:
            CONVERTERS[key](value, data, out, notes)
        elif key in RENAMED and RENAMED[key] in fields:
            out[RENAMED[key]] = value
        elif key in RENAMED or key in UNSUPPORTED:
            reason = UNSUPPORTED.get(key, f"no {RENAMED.get(key)!r} field for stage {data.get('stage', 'sft')!r}")
            notes.append(f"{key}: ignored - {reason}")
        else:
            out[key] = value  # a tunelab name, or unknown: validation names it with a hint
    if data.get("finetuning_type") == "lora" and out.get("quantization") == "4bit":
        out["method"] = "qlora"
    return out, notes


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from ``path`` (ConfigError naming the file otherwise)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of field: value")
    return data


def load_any_config(path: str | Path | None, overrides: list[str] | None = None) -> tuple[RunConfig, list[str]]:
    """A tunelab or LLaMA-Factory YAML (plus tunelab ``key=value`` overrides) as a RunConfig, with the notes."""
    data = read_yaml(path) if path is not None else {}
    notes: list[str] = []
    if is_llamafactory(data):
        data, notes = translate(data)
        notes.insert(0, f"{path}: read as a LLaMA-Factory config")
    data.update(parse_overrides(overrides or []))
    return validate_config(data, str(path) if path is not None else "overrides"), notes


def import_config(path: str | Path) -> tuple[str, list[str]]:
    """The tunelab YAML for a LLaMA-Factory file (the keys it sets, validated), headed by its notes as comments."""
    data, notes = translate(read_yaml(path))
    config = validate_config(data, str(path))
    body = yaml.safe_dump(config.model_dump(mode="json", include=set(data)), sort_keys=False, allow_unicode=True)
    head = [f"# tunelab run config translated from LLaMA-Factory's {Path(path).name}", *[f"# note: {n}" for n in notes]]
    return "\n".join(head) + "\n" + body, notes
