"""ExportConfig: what `tunelab export` and the Export tab do, as one typed schema with readable errors."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tunelab.core.schema import validate_schema

ExportDtype = Literal["auto", "bf16", "fp16", "fp32"]
GgufType = Literal["q8_0", "f16", "f32"]
GGUF_TYPES = ("q8_0", "f16", "f32")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|KIB|MIB|GIB)?\s*$", re.IGNORECASE)
_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(text: str) -> int:
    """'5GB' -> 5_000_000_000 bytes (B, KB, MB, GB, KiB, MiB, GiB); ValueError otherwise."""
    match = _SIZE.match(str(text))
    if not match:
        raise ValueError(f"{text!r} is not a size; write it like 5GB, 500MB or 2GiB")
    return int(float(match.group(1)) * _UNITS[(match.group(2) or "B").upper()])


class ExportConfig(BaseModel):
    """A merge-and-export job: source (run, or model + adapter), output folder and formats."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    run: str | None = Field(None, description="Training run directory to export.")
    model: str | None = Field(None, description="Base model (folder, hub id or 'demo'); default: the adapter's base.")
    adapter: str | None = Field(None, description="PEFT adapter folder to merge into the base.")
    template: str = Field("auto", description="Chat template family, or 'auto' (the run's).")
    out: str | None = Field(None, description="Output folder (default: <run>/merged).")
    shard_size: str = Field("5GB", description="Largest safetensors shard, e.g. 5GB or 500MB.")
    dtype: ExportDtype = Field("auto", description="Saved weight dtype (auto: the base model's own, fp32 if unknown).")
    gguf: GgufType | None = Field(None, description="Also write a GGUF file (Llama architecture): q8_0, f16 or f32.")
    reload_unquantized: bool = Field(False, description="Merge a QLoRA/8-bit run into the base reloaded in full precision.")
    verify: bool = Field(True, description="Reload the export with plain transformers and compare logits.")
    serve_check: bool = Field(False, description="Last check: serve the export with vLLM and answer a test prompt "
                              "(vLLM here or TUNELAB_VLLM_PYTHON).")
    push_to_hub: str | None = Field(None, description="Upload the export to this hub repo (needs network and a token).")
    overwrite: bool = Field(False, description="Replace an existing output folder.")
    trust_remote_code: bool = Field(False, description="Allow model code from the model folder or hub.")

    @field_validator("shard_size")
    @classmethod
    def _size(cls, value: str) -> str:
        if parse_size(value) <= 0:
            raise ValueError("must be more than 0 bytes")
        return value

    @field_validator("gguf", mode="before")
    @classmethod
    def _gguf(cls, value: Any) -> Any:
        return None if value in ("", "none", "None") else (value.lower() if isinstance(value, str) else value)

    @model_validator(mode="after")
    def _source(self) -> "ExportConfig":
        if self.run and (self.model or self.adapter):
            raise ValueError("give either run or model/adapter, not both")
        if not (self.run or self.model or self.adapter):
            raise ValueError("give a training run (--run RUN_DIR) or a model (--model M, optionally with --adapter A)")
        if not self.run and not self.out:
            raise ValueError("out: give an output folder (--out DIR) when exporting a model/adapter without a run")
        return self

    @property
    def shard_bytes(self) -> int:
        """shard_size in bytes."""
        return parse_size(self.shard_size)


def validate_export_config(data: dict[str, Any], source: str = "export options") -> ExportConfig:
    """Build an ExportConfig, raising ConfigError with one line per problem (field, value, valid choices)."""
    return validate_schema(ExportConfig, data, source, "export options")
