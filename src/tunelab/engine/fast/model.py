"""Run a Llama-family causal LM (llama, qwen2, mistral, qwen3, gemma3_text) with LoRA/QLoRA adapters through the
fast path. Family conventions come from ``Family``: Qwen3's per-head q/k norms, Gemma 3's (1 + w) norms, GeGLU,
norms on the attention and MLP outputs, scaled embeddings (inside its embedding module) and local/global layers
(sliding-window attention with their own RoPE tables).

The model instance (never its class) gets two forwards:
- the backbone (``model.model``): padded or packed batches become one stream of real tokens (padding-free), each
  example attending only to itself; layers run the fused LoRA blocks of ``lora.py``; the output is scattered
  back to (batch, seq, hidden) so trl's own fused LM head and any caller still work;
- the causal LM: with ``labels``, the stream goes straight into the fused linear cross-entropy (no logits).
Calls the fast path does not cover (generation with a cache, inputs_embeds, hidden states requested) go to the
original forwards. ``remove()`` restores them.
"""

from __future__ import annotations

import functools
import inspect
import logging
import types
from dataclasses import dataclass, field
from typing import Any

import torch

from tunelab.engine.fast import kernels as K
from tunelab.engine.fast.attention import Segments, attend
from tunelab.engine.fast.checkpoint import ActivationStore, CheckpointedLayer
from tunelab.engine.fast.lora import (HeadNorm, MLPSpec, NormMLP, NormQKV, OutProj, PostNorm, QKVSpec, Unsupported,
                                      _flat_lora, proj_of)
from tunelab.engine.fast.loss import IGNORE, linear_cross_entropy

log = logging.getLogger(__name__)

SUPPORTED_TYPES = ("llama", "qwen2", "mistral", "qwen3", "gemma3_text")
CHECKPOINTING = ("none", "mlp", "full", "offload")


@dataclass
class FastOptions:
    """The switchable pieces of the fast path (each can be turned off to measure its gain)."""

    kernels: bool = True  # Triton RMSNorm/RoPE/SwiGLU/CE kernels (off: PyTorch ops, same math)
    fused_ce: bool = True  # LM head + cross-entropy in chunks, no full logits
    padding_free: bool = True  # drop pad tokens; attention confined to each example (varlen)
    checkpointing: str = "none"  # none | mlp (recompute the MLP's gate/up) | full | offload (inputs in CPU RAM)
    mlp_chunk: int = 16384  # tokens per MLP chunk: bounds the (tokens, intermediate) temporaries at long context


# -- tokens: padded / packed batch -> one stream of examples ----------------------------------------------------


@dataclass
class TokenPlan:
    """Which tokens of a (B, S) batch run, at which positions, split into which examples."""

    batch: int
    seq: int
    index: torch.Tensor | None  # flat indices of the kept tokens (None: all of them)
    positions: torch.Tensor  # (T,) position ids
    segments: Segments
    starts: torch.Tensor  # (T,) bool: first token of an example
    real: int = 0  # real (non-pad) tokens of the batch, known on the host

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(self.batch * self.seq, *x.shape[2:])
        return flat if self.index is None else flat.index_select(0, self.index)

    def scatter(self, h: torch.Tensor) -> torch.Tensor:
        if self.index is None:
            return h.view(self.batch, self.seq, -1)
        out = h.new_zeros(self.batch * self.seq, h.shape[-1]).index_copy(0, self.index, h)
        return out.view(self.batch, self.seq, -1)

    def targets(self, labels: torch.Tensor) -> torch.Tensor:
        """Each kept token's next-token label within its example (-100 at each example's last token)."""
        lab = self.gather(labels)
        nxt = torch.full_like(lab, IGNORE)
        nxt[:-1] = lab[1:]
        nxt[:-1][self.starts[1:]] = IGNORE
        return nxt


def plan_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, position_ids: torch.Tensor | None,
                padding_free: bool) -> TokenPlan:
    """Build the TokenPlan of a batch (computed on the CPU; one small host sync per step)."""
    b, s = input_ids.shape
    device = input_ids.device
    keep = None if attention_mask is None else attention_mask.detach().to("cpu", torch.bool)
    if keep is not None and bool(keep.all()):
        keep = None
    real = b * s if keep is None else int(keep.sum())
    if keep is not None and not padding_free and _right_padded(keep):
        keep = None  # compute the pads too (masked out of the loss; causal attention never lets real tokens see them)
    pos = None if position_ids is None else position_ids.detach().to("cpu").expand(b, s)
    starts = torch.zeros(b, s, dtype=torch.bool)
    starts[:, 0] = True
    if pos is not None:
        starts |= pos == 0
    if keep is None:
        index = None
        flat_starts = starts.reshape(-1)
        positions = pos.reshape(-1) if pos is not None else torch.arange(s).repeat(b)
    else:
        index = keep.reshape(-1).nonzero().squeeze(1)
        flat_starts = starts.reshape(-1)[index]
        row = index // s
        flat_starts[1:] |= row[1:] != row[:-1]
        flat_starts[0] = True
        positions = (pos.reshape(-1) if pos is not None else torch.arange(s).repeat(b))[index]
    first = flat_starts.nonzero().squeeze(1)
    bounds = torch.cat([first, torch.tensor([flat_starts.numel()])])
    lengths = (bounds[1:] - bounds[:-1]).tolist()
    rows = b if index is None and len(lengths) == b else 0
    cu = bounds.to(device=device, dtype=torch.int32)
    return TokenPlan(b, s, None if index is None else index.to(device), positions.to(device),
                     Segments(cu, lengths, rows), flat_starts.to(device), real)


def _right_padded(keep: torch.Tensor) -> bool:
    counts = keep.sum(1, keepdim=True)
    return bool((keep == (torch.arange(keep.shape[1])[None, :] < counts)).all())


# -- layers -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    """How a model family's decoder layer differs from Llama's."""

    offset: bool = False  # norms compute x * rstd * (1 + w) in fp32 (Gemma)
    sandwich: bool = False  # norms on the attention and MLP outputs before each residual add (Gemma)
    act: str = "silu"  # the MLP gate's activation


FAMILIES = {"gemma3_text": Family(offset=True, sandwich=True, act="gelu_tanh")}


def family_of(cfg: Any) -> Family:
    """The Family of a model config (Llama's conventions unless listed in FAMILIES)."""
    return FAMILIES.get(getattr(cfg, "model_type", ""), Family())


def layer_window(cfg: Any, index: int) -> int | None:
    """The sliding-window size of layer ``index`` (None: full causal attention)."""
    window = getattr(cfg, "sliding_window", None)
    types_ = getattr(cfg, "layer_types", None)
    if types_ is not None:
        return window if types_[index] == "sliding_attention" else None
    return window if getattr(cfg, "model_type", "") == "mistral" else None


@dataclass
class Step:
    """Per-forward state shared by every layer."""

    rope: dict[Any, tuple[torch.Tensor, torch.Tensor]]  # cos, sin per RoPE table
    rope_keys: list[Any]  # the table each layer uses
    windows: list[int | None]
    family: Family
    segments: Segments
    recompute_mlp: bool
    mlp_chunk: int
    specs: dict = field(default_factory=dict)  # layer index -> its specs, built once per forward (reused on recompute)


def _norm(module: Any) -> tuple[torch.Tensor, float]:
    """An RMSNorm module's weight and epsilon (Llama-style ``variance_epsilon`` or Gemma-style ``eps``)."""
    eps = getattr(module, "variance_epsilon", None)
    return module.weight, float(module.eps if eps is None else eps)


def _head_norm_of(attn: Any, name: str) -> HeadNorm | None:
    module = getattr(attn, name, None)
    return None if module is None else HeadNorm(*_norm(module))


def layer_specs(layer: Any, step: Step) -> tuple[QKVSpec, Any, MLPSpec]:
    """The fused blocks' specs of one decoder layer: its projections (with their LoRA tensors) and norms."""
    attn, mlp, fam = layer.self_attn, layer.mlp, step.family
    cfg = attn.config
    q_heads = cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or q_heads
    projs = [proj_of(attn.q_proj), proj_of(attn.k_proj), proj_of(attn.v_proj)]
    spec = QKVSpec(projs, _norm(layer.input_layernorm)[1], q_heads, kv_heads, attn.head_dim, fam.offset,
                   _head_norm_of(attn, "q_norm"), _head_norm_of(attn, "k_norm"))
    pre = layer.pre_feedforward_layernorm if fam.sandwich else layer.post_attention_layernorm
    mspec = MLPSpec(proj_of(mlp.gate_proj), proj_of(mlp.up_proj), proj_of(mlp.down_proj), _norm(pre)[1],
                    step.recompute_mlp, step.mlp_chunk, fam.offset, fam.act, residual=not fam.sandwich)
    return spec, proj_of(attn.o_proj), mspec


def layer_forward(layer: Any, step: Step, index: int, h: torch.Tensor) -> torch.Tensor:
    """One decoder layer on a (T, d) token stream."""
    attn, fam = layer.self_attn, step.family
    if index not in step.specs:
        step.specs[index] = layer_specs(layer, step)
    spec, o, mspec = step.specs[index]
    cos, sin = step.rope[step.rope_keys[index]]
    q, k, v = NormQKV.apply(h, layer.input_layernorm.weight, cos, sin, spec, *_flat_lora(spec.projs))
    a = attend(q, k, v, step.segments, attn.scaling, step.windows[index]).reshape(h.shape[0], -1)
    if fam.sandwich:
        h = PostNorm.apply(OutProj.apply(a, None, o, o.A, o.B), h, *_norm(layer.post_attention_layernorm), fam.offset)
        pre = layer.pre_feedforward_layernorm
    else:
        h = OutProj.apply(a, h, o, o.A, o.B)
        pre = layer.post_attention_layernorm
    y = NormMLP.apply(h, pre.weight, mspec, *_flat_lora([mspec.gate, mspec.up, mspec.down]))
    if fam.sandwich:
        y = PostNorm.apply(y, h, *_norm(layer.post_feedforward_layernorm), fam.offset)
    return y


class FinalNorm(torch.autograd.Function):
    """The backbone's last RMSNorm on the token stream."""

    @staticmethod
    def forward(ctx: Any, h: torch.Tensor, w: torch.Tensor, eps: float, offset: bool = False) -> torch.Tensor:
        y, rstd = K.rmsnorm_forward(h, w, eps, offset)
        ctx.save_for_backward(h, rstd, w)
        ctx.offset = offset
        return y

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[Any, ...]:
        h, rstd, w = ctx.saved_tensors
        return K.rmsnorm_backward(dy, h, rstd, w, offset=ctx.offset), None, None, None


def rope_tables(backbone: Any, h: torch.Tensor, positions: torch.Tensor
                ) -> tuple[dict[Any, tuple[torch.Tensor, torch.Tensor]], list[Any]]:
    """cos/sin (T, D) for each RoPE table the backbone has, and the table of each layer (Gemma 3's local and
    global layers use different bases; other families have one table)."""
    cfg, rot = backbone.config, backbone.rotary_emb
    n = cfg.num_hidden_layers
    if "layer_type" in inspect.signature(rot.forward).parameters:
        keys = list(cfg.layer_types[:n])
        calls = {key: functools.partial(rot, layer_type=key) for key in set(keys)}
    elif hasattr(backbone, "rotary_emb_local"):  # older transformers: a second module for the local layers
        keys = ["local" if layer_window(cfg, i) else "global" for i in range(n)]
        calls = {"global": rot, "local": backbone.rotary_emb_local}
    else:
        keys, calls = [None] * n, {None: rot}
    tables = {}
    for key, call in calls.items():
        cos, sin = call(h[None], position_ids=positions[None])
        tables[key] = (cos[0].contiguous(), sin[0].contiguous())
    return tables, keys


def fast_hidden(backbone: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                position_ids: torch.Tensor | None, options: FastOptions,
                layer_params: list[list[torch.Tensor]] | None = None) -> tuple[torch.Tensor, TokenPlan]:
    """The final-norm hidden states (T, d) of the batch's real tokens, and the plan that placed them.
    ``layer_params``: each layer's trainable parameters (FastPatch reads them once; None: read them now)."""
    plan = plan_tokens(input_ids, attention_mask, position_ids, options.padding_free)
    h = plan.gather(backbone.embed_tokens(input_ids))  # Gemma's embedding module applies its sqrt(d) scale
    cfg = backbone.config
    tables, keys = rope_tables(backbone, h, plan.positions)
    # Long sequences under layer checkpointing: the recomputed layer keeps only the MLP input, not its
    # (tokens, intermediate) gate/up outputs, which would dominate memory (7 x hidden per token).
    long_seq = options.checkpointing in ("full", "offload") and h.shape[0] > options.mlp_chunk
    layers = backbone.layers[: cfg.num_hidden_layers]
    step = Step(tables, keys, [layer_window(cfg, i) for i in range(len(layers))], family_of(cfg), plan.segments,
                options.checkpointing == "mlp" or long_seq, options.mlp_chunk)
    store = None
    if options.checkpointing in ("full", "offload") and torch.is_grad_enabled():
        store = ActivationStore(options.checkpointing == "offload", h.device)
    for index, layer in enumerate(layers):
        run = functools.partial(layer_forward, layer, step, index)
        if store is None:
            h = run(h)
        else:
            params = layer_params[index] if layer_params is not None else trainable(layer)
            h = CheckpointedLayer.apply(h, run, store, *params)
    h = FinalNorm.apply(h, *_norm(backbone.norm), step.family.offset)
    return h, plan


def trainable(module: Any) -> list[torch.Tensor]:
    """The parameters of ``module`` that require a gradient."""
    return [p for p in module.parameters() if p.requires_grad]


# -- patching ---------------------------------------------------------------------------------------------------


def causal_lm_of(model: Any) -> Any:
    """The transformers causal LM inside a (peft) model."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def check_model(model: Any) -> None:
    """Raise Unsupported (with the reason) when the fast path cannot run this model."""
    lm = causal_lm_of(model)
    cfg = lm.config
    kind = getattr(cfg, "model_type", "?")
    if kind not in SUPPORTED_TYPES:
        raise Unsupported(f"model type {kind!r} (the fast path covers {', '.join(SUPPORTED_TYPES)})")
    _check_family(cfg)
    if getattr(cfg, "pretraining_tp", 1) not in (None, 1):
        raise Unsupported("pretraining_tp > 1")
    if getattr(cfg, "attention_dropout", 0.0):
        raise Unsupported("attention_dropout > 0")
    if hasattr(lm.lm_head, "lora_A") or hasattr(lm.model.embed_tokens, "lora_embedding_A"):
        raise Unsupported("LoRA on the LM head or the embeddings")
    backbone = lm.model
    if not hasattr(backbone, "rotary_emb"):
        raise Unsupported("no model-level rotary embedding (older transformers)")
    for layer in backbone.layers:
        attn, mlp = layer.self_attn, layer.mlp
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            proj_of(getattr(attn, name))
        for name in ("gate_proj", "up_proj", "down_proj"):
            proj_of(getattr(mlp, name))
        if hasattr(attn, "q_norm") != (kind in ("qwen3", "gemma3_text")):
            raise Unsupported(f"q/k norms where {kind} has none, or none where it has them")


def _check_family(cfg: Any) -> None:
    """The family's activation, soft-capping and attention conventions are the ones the fast layers compute."""
    act = getattr(cfg, "hidden_activation", None) or getattr(cfg, "hidden_act", "silu")
    want = ("gelu_pytorch_tanh",) if family_of(cfg).act == "gelu_tanh" else ("silu", "swish")
    if act not in want:
        raise Unsupported(f"activation {act!r} (the fast path computes {want[0]} for {cfg.model_type})")
    for name in ("attn_logit_softcapping", "final_logit_softcapping"):
        if getattr(cfg, name, None):
            raise Unsupported(f"{name} (logit soft-capping)")
    if getattr(cfg, "use_bidirectional_attention", False):
        raise Unsupported("bidirectional attention")


def _applicable(kwargs: dict, input_ids: Any) -> bool:
    if input_ids is None or kwargs.get("inputs_embeds") is not None:
        return False
    if kwargs.get("use_cache") or kwargs.get("cache") is not None or kwargs.get("past_key_values") is not None:
        return False
    return not (kwargs.get("output_attentions") or kwargs.get("output_hidden_states"))


class FastPatch:
    """The fast forwards installed on one model instance."""

    def __init__(self, model: Any, options: FastOptions):
        if options.checkpointing not in CHECKPOINTING:
            raise ValueError(f"checkpointing: {options.checkpointing!r}; valid: {', '.join(CHECKPOINTING)}")
        check_model(model)
        self.options = options
        self.lm = causal_lm_of(model)
        self.backbone = self.lm.model
        # read once: walking every layer's parameters on each forward costs host time the GPU waits for
        self.layer_params = [trainable(layer) for layer in self.backbone.layers[: self.lm.config.num_hidden_layers]]
        self.last: dict[str, Any] = {}  # the last fused-loss forward: entropy_sum, top1, tokens (labelled), seen
        self._backbone_forward = self.backbone.forward
        self._lm_forward = self.lm.forward
        self._own = {id(m): "forward" in m.__dict__ for m in (self.backbone, self.lm)}
        K.set_torch_fallback(not options.kernels)
        self.backbone.forward = types.MethodType(_backbone_forward(self), self.backbone)
        if options.fused_ce:
            self.lm.forward = types.MethodType(_lm_forward(self), self.lm)
        self.lm._tunelab_fast = self
        if getattr(self.backbone, "gradient_checkpointing", False):
            self.lm.gradient_checkpointing_disable()  # the fast layers checkpoint themselves (options.checkpointing)

    def remove(self) -> None:
        """Restore the original forwards."""
        for module, original in ((self.backbone, self._backbone_forward), (self.lm, self._lm_forward)):
            if self._own[id(module)]:
                module.forward = original
            else:
                module.__dict__.pop("forward", None)
        self.lm.__dict__.pop("_tunelab_fast", None)


def _backbone_forward(patch: FastPatch) -> Any:
    from transformers.modeling_outputs import BaseModelOutputWithPast

    original = patch._backbone_forward

    def forward(self: Any, input_ids: Any = None, attention_mask: Any = None, position_ids: Any = None,
                **kwargs: Any) -> Any:
        if not _applicable(kwargs, input_ids):
            return original(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **kwargs)
        h, plan = fast_hidden(self, input_ids, attention_mask, position_ids, patch.options, patch.layer_params)
        return BaseModelOutputWithPast(last_hidden_state=plan.scatter(h))

    return forward


def _lm_forward(patch: FastPatch) -> Any:
    from transformers.modeling_outputs import CausalLMOutputWithPast

    original = patch._lm_forward

    def forward(self: Any, input_ids: Any = None, attention_mask: Any = None, position_ids: Any = None,
                labels: Any = None, num_items_in_batch: Any = None, **kwargs: Any) -> Any:
        if labels is None or not _applicable(kwargs, input_ids) or kwargs.get("shift_labels") is not None:
            if num_items_in_batch is not None:
                kwargs["num_items_in_batch"] = num_items_in_batch
            return original(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                            labels=labels, **kwargs)
        h, plan = fast_hidden(self.model, input_ids, attention_mask, position_ids, patch.options, patch.layer_params)
        stats: dict[str, Any] = {"seen": plan.real}
        loss = linear_cross_entropy(h, self.lm_head.weight, plan.targets(labels), num_items_in_batch, stats=stats)
        patch.last = stats
        return CausalLMOutputWithPast(loss=loss, logits=None)

    return forward


def apply_fast_path(model: Any, options: FastOptions | None = None) -> FastPatch:
    """Install the fast forwards on ``model`` (a peft or plain causal LM); raises Unsupported with the reason."""
    patch = FastPatch(model, options or FastOptions())
    log.info("fast path on: %s", patch.options)
    return patch
