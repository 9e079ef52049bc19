"""A model's shape from its config.json (no torch, no hub): sizes and parameter counts for the estimator.

Dense decoders (Llama, Qwen2/3, Mistral, Gemma ...) and mixture-of-experts ones (Mixtral, Qwen-MoE, DeepSeek style
``n_routed_experts``) are read from the usual keys; a vision-language config is read through its ``text_config``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.core.schema import ConfigError

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class ModelShape:
    """The sizes that decide memory and FLOPs."""

    model_type: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool
    experts: int = 0  # routed experts per MoE layer (0: dense)
    experts_per_token: int = 0
    expert_intermediate: int = 0
    shared_intermediate: int = 0  # always-on shared expert(s) of an MoE layer, summed
    moe_layers: int = 0

    def projection_sizes(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each dense-layer projection LoRA can target."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        mlp = self.intermediate
        return {"q_proj": (self.hidden, q), "k_proj": (self.hidden, kv), "v_proj": (self.hidden, kv),
                "o_proj": (q, self.hidden), "gate_proj": (self.hidden, mlp), "up_proj": (self.hidden, mlp),
                "down_proj": (mlp, self.hidden)}

    @property
    def attention_params(self) -> int:
        """Weights of one layer's q/k/v/o projections."""
        return sum(i * o for name, (i, o) in self.projection_sizes().items() if name in PROJECTIONS[:4])

    @property
    def dense_mlp_params(self) -> int:
        """Weights of one dense MLP (gate, up, down)."""
        return 3 * self.hidden * self.intermediate

    @property
    def moe_mlp_params(self) -> int:
        """Weights of one MoE layer's MLP: every routed expert, the shared ones and the router."""
        return 3 * self.hidden * (self.experts * self.expert_intermediate + self.shared_intermediate) + self.hidden * self.experts

    @property
    def linear_params(self) -> int:
        """Weights of every decoder-layer linear layer (what 4-/8-bit quantization stores quantized)."""
        dense = self.layers - self.moe_layers
        return self.layers * self.attention_params + dense * self.dense_mlp_params + self.moe_layers * self.moe_mlp_params

    @property
    def active_linear_params(self) -> int:
        """Linear weights one token passes through (MoE: only its routed experts)."""
        if not self.moe_layers:
            return self.linear_params
        routed = 3 * self.hidden * (self.experts_per_token * self.expert_intermediate + self.shared_intermediate)
        dense = self.layers - self.moe_layers
        return (self.layers * self.attention_params + dense * self.dense_mlp_params
                + self.moe_layers * (routed + self.hidden * self.experts))

    @property
    def embedding_params(self) -> int:
        """Input embedding plus, when untied, the LM head."""
        return self.vocab * self.hidden * (1 if self.tied else 2)

    @property
    def other_params(self) -> int:
        """Everything not in a linear layer: embeddings, head, norms."""
        return self.embedding_params + (2 * self.layers + 1) * self.hidden

    @property
    def total_params(self) -> int:
        """Every parameter."""
        return self.linear_params + self.other_params

    def layer_params(self) -> int:
        """Parameters of one (average) decoder layer."""
        return self.linear_params // self.layers + 2 * self.hidden

    def label(self) -> str:
        """'llama, 8.0B parameters (32 layers, hidden 4096)'."""
        moe = f", MoE {self.experts} experts ({self.experts_per_token} per token)" if self.moe_layers else ""
        count = f"{self.total_params / 1e9:.1f}B" if self.total_params >= 1e9 else f"{self.total_params / 1e6:.1f}M"
        return f"{self.model_type}, {count} parameters ({self.layers} layers, hidden {self.hidden}{moe})"


def _int(cfg: dict[str, Any], *keys: str, default: int | None = None) -> int:
    for key in keys:
        value = cfg.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    if default is None:
        raise ConfigError(f"model config: none of {', '.join(keys)} is a positive integer")
    return default


def shape_from_config(cfg: dict[str, Any]) -> ModelShape:
    """A ModelShape from a config.json mapping (a VLM's text_config is used when present)."""
    if isinstance(cfg.get("text_config"), dict):
        cfg = {**cfg["text_config"], "model_type": cfg["text_config"].get("model_type") or cfg.get("model_type")}
    hidden = _int(cfg, "hidden_size", "d_model", "n_embd")
    heads = _int(cfg, "num_attention_heads", "n_head")
    layers = _int(cfg, "num_hidden_layers", "n_layer", "num_layers")
    experts = _int(cfg, "num_local_experts", "num_experts", "n_routed_experts", default=0)
    expert_inter = _int(cfg, "moe_intermediate_size", default=0) if experts else 0
    intermediate = _int(cfg, "intermediate_size", "ffn_dim", default=expert_inter or 4 * hidden)
    shared = _int(cfg, "shared_expert_intermediate_size", default=0) if experts else 0
    if experts and not shared:
        shared = _int(cfg, "n_shared_experts", default=0) * expert_inter
    moe_layers = 0
    if experts:
        first_dense = _int(cfg, "first_k_dense_replace", default=0)
        step = _int(cfg, "decoder_sparse_step", "moe_layer_freq", default=1)
        moe_layers = len([i for i in range(first_dense, layers) if (i + 1) % step == 0 or step == 1])
        expert_inter = expert_inter or intermediate
    return ModelShape(
        model_type=str(cfg.get("model_type") or "unknown"), hidden=hidden, layers=layers, heads=heads,
        kv_heads=_int(cfg, "num_key_value_heads", default=heads), head_dim=_int(cfg, "head_dim", default=hidden // heads),
        intermediate=intermediate, vocab=_int(cfg, "vocab_size", "padded_vocab_size"),
        tied=bool(cfg.get("tie_word_embeddings", False)), experts=experts if moe_layers else 0,
        experts_per_token=_int(cfg, "num_experts_per_tok", "moe_topk", default=2) if moe_layers else 0,
        expert_intermediate=expert_inter if moe_layers else 0, shared_intermediate=shared if moe_layers else 0,
        moe_layers=moe_layers,
    )


def hub_cache_dirs() -> list[Path]:
    """Where a hub id's files may already be on disk: $HF_HUB_CACHE, $HF_HOME/hub, ~/.cache/huggingface/hub."""
    dirs = [os.environ.get("HF_HUB_CACHE"), os.environ.get("HF_HOME") and str(Path(os.environ["HF_HOME"]) / "hub")]
    return [Path(d) for d in dirs if d] + [Path.home() / ".cache" / "huggingface" / "hub"]


def find_config(model: str) -> Path | None:
    """config.json of a local model folder, or of a hub id already in the local Hugging Face cache (no download)."""
    folder = Path(model).expanduser()
    if (folder / "config.json").is_file():
        return folder / "config.json"
    if model.count("/") != 1 or folder.is_dir():
        return None
    for cache in hub_cache_dirs():
        snapshots = cache / f"models--{model.replace('/', '--')}" / "snapshots"
        found = sorted(snapshots.glob("*/config.json"), key=lambda p: p.stat().st_mtime, reverse=True) if snapshots.is_dir() else []
        if found:
            return found[0]
    return None


def load_shape(model: str) -> ModelShape:
    """The shape of a local folder or cached hub id; ConfigError naming the model when no config.json is found."""
    path = find_config(model)
    if path is None:
        raise ConfigError(
            f"model: no config.json for {model!r} (not a model folder, and not in the local Hugging Face cache "
            f"{hub_cache_dirs()[-1]}); the estimate needs the model's config"
        )
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"model: {path} is not readable JSON ({exc})") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"model: {path} holds {type(cfg).__name__}, not a mapping of config fields")
    try:
        return shape_from_config(cfg)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
