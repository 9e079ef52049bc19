"""The estimator's cost model: bytes per part and seconds per step of one run config (pure Python: no torch).

Memory is counted part by part (weights, LoRA adapter, gradients, optimizer state and its temporaries, checkpointed
layer inputs, one layer's working set in backward, trl's chunked LM head) with the byte sizes the engine uses, plus
the constants in CAL, fitted on measured runs (each says where it comes from). Speed is FLOPs over the GPU's
datasheet rate times a fitted efficiency, plain transformers' element-wise work over the memory bandwidth, 4-bit
dequantization, and a per-step host time that the fast path cannot hide.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tunelab.core.config import RunConfig
from tunelab.core.gpus import CPU, GpuClass
from tunelab.core.model_shape import PROJECTIONS, ModelShape

GIB = 2**30
FAST_TYPES = ("llama", "qwen2", "mistral", "qwen3", "gemma3_text")  # = engine.fast.model.SUPPORTED_TYPES (a test checks)
FAST_STAGES = ("pt", "sft")
PAIR_STAGES = ("dpo", "orpo", "simpo", "kto")  # two sequences per example (chosen/rejected, or completion + KL)
TRL_TOKEN_CHUNK, TRL_VOCAB_CHUNK = 4096, 32768  # trl.kernels.chunked_logprob: the fused LM head's tile

# Constants, fitted on the rows of benchmarks/results/estimate-check.json (names below are its rows): the 8B rows
# (Llama-3.1 shape, product path, one H200, imported from h200-product.json, 2026-12-02) set the first values; the
# 7B (Qwen2.5 shape) and 3B (Llama-3.2 shape, full fine-tuning) rows measured on one H100 on 2026-12-06 checked them
# (the fast path's were predicted within 9% before measuring) and refitted the plain path's speed and the slack; the
# plain rows re-measured later that day (8 steps, calls that wrote no model first) and the full 7B/8B rows (memory
# predicted within 5% before they ran) refitted plain_bytes and dequant_eff["none"].
CAL: dict[str, Any] = {
    # outside torch's allocator (CUDA context, cuBLAS/cuDNN handles); not in the rows (they record torch's figures):
    # an assumption (about half a GiB on Hopper with CUDA 12-13), used only for the fit verdict
    "context_gib": 0.55,
    # allocated besides what is counted (cuBLAS workspaces, RoPE tables, small buffers) and, with
    # work_factor["fast"], set so llama8b-lora-fast (4,070 tokens a step) and -nopack (818) land within 2%
    "workspace_gib": 0.25,
    # what one decoder layer keeps for backward, as a share of the tensors _layer_saved counts (plain transformers
    # keeps them all; the fast path's fused kernels about half: 12 GiB for 32 layers x 4,096 tokens in the bare-loop
    # fast-none row of h200-fast-path.json, and the slope of llama8b-lora-fast over -nopack, 0.44 GiB per 3,252
    # tokens); one layer's working set in backward is work_factor times that (saved tensors + their gradients;
    # none: llama8b-lora-none and qwen7b-lora-none within 3%)
    "saved_share": {"fast": 0.55, "none": 1.0},
    "work_factor": {"fast": 1.0, "none": 1.6},
    # reserved - allocated (the caching allocator's slack): a constant, shares of the activation peak, of the
    # offloaded layer inputs (their GPU copies live until the side stream has copied them out) and of the
    # optimizer's step temporary (made and freed every step). fast, offload: 0.6 GiB at 818 tokens, 1.7-2.6 at
    # 4,070 (the five fast rows); fast, other modes: 0.2-1.6 GiB with 3-11 GiB of activations (the bare-loop rows
    # of h200-fast-path.json); none: 0.6-1.2 GiB on the LoRA/QLoRA plain rows, 2.0 on llama3b-full-none (6 GiB
    # temporary)
    "slack_gib": {"fast": 0.2, "none": 0.4},
    "slack_act": {"fast": 0.08, "none": 0.2},
    "slack_offload": 2.0,
    "slack_temp": 0.21,
    # share of the datasheet bf16 rate the GEMMs reach: the README's profile of the 8B fast step (~650 of 989
    # TFLOP/s), llama8b-lora-fast within 3%; the plain path runs the same cuBLAS GEMMs
    "gemm_eff": {"fast": 0.63, "none": 0.63, "cpu": 0.05},
    # plain transformers' unfused element-wise work and masked attention over packed rows, as memory traffic: bytes
    # per token, per layer and per unit of (hidden + intermediate) at the datasheet bandwidth. Fitted with
    # dequant_eff["none"] on the eight plain rows (smallest worst error: qwen7b-full-none -20%, llama8b-lora-none
    # +19%, the H200 row, whose speed the bandwidth term over-credits); left out of the fit one at a time, a row is
    # predicted within 27% (estimate_check.py --leave-one-out)
    "plain_bytes": 870.0,
    # 4-bit dequantization: share of the datasheet bandwidth. fast: llama8b-qlora-fast is host-bound, so this
    # hardly matters there; none: bitsandbytes dequantizes each weight in forward, recompute and backward and the
    # plain QLoRA rows ran 15-16% slower than their LoRA rows (qwen7b 4,072 vs 4,873, llama8b 3,707 vs 4,330 tok/s)
    "dequant_eff": {"fast": 0.35, "none": 0.1, "cpu": 0.05},
    # host time per step the GPU cannot hide: seconds + per layer (+ per layer with 4-bit weights). fast: from
    # llama8b-lora-fast-nopack (0.429 s with 818 tokens: host-bound), the 2-layer rows of
    # h200-product-smoke-2layers.json (~0.1 s) and llama8b-qlora-fast (+0.06 s); none: small, not separable from
    # plain_bytes; cpu: tiny-model runs on this project's shared 2-core machine (rough)
    "host_s": {"fast": (0.075, 0.0111, 0.0019), "none": (0.05, 0.002, 0.004), "cpu": (1.0, 0.5, 0.5)},
    # packed rows fill this share of batch x cutoff (llama8b-lora-fast: 4,070 of 4,096 tokens)
    "pack_fill": 0.994,
}


@dataclass(frozen=True)
class Device:
    """What the estimate is for: a detected GPU, a class from the table, or the CPU."""

    label: str
    gpu: GpuClass
    memory_gib: float  # total device memory (the CPU: host RAM)

    @property
    def is_cpu(self) -> bool:
        """Training on the CPU (fp32, no caching allocator)."""
        return self.gpu.name == CPU


# -- what runs ------------------------------------------------------------------------------------------------


def expected_path(config: RunConfig, shape: ModelShape, device: Device) -> tuple[str, str]:
    """The booster the trainer will pick (engine/booster.py's rules, without loading the model)."""
    if config.booster in ("none", "liger"):
        return config.booster, f"booster: {config.booster}"
    blocker = None
    if config.stage not in FAST_STAGES:
        blocker = f"stage {config.stage!r}"
    elif config.method not in ("lora", "qlora"):
        blocker = f"method {config.method!r}"
    elif config.quantization == "8bit" or config.use_dora or config.lora_dropout > 0:
        blocker = "8-bit, DoRA or lora_dropout"
    elif shape.model_type not in FAST_TYPES:
        blocker = f"model type {shape.model_type!r}"
    elif config.world_size > 1:
        blocker = "several processes"
    if blocker:
        refused = " (booster 'fast' will be refused)" if config.booster == "fast" else ""
        return "none", f"plain transformers ({blocker}){refused}"
    if config.booster == "fast":
        return "fast", "booster: fast"
    if device.is_cpu:
        return "none", "plain transformers (no CUDA GPU)"
    return "fast", "fast path"


def checkpointing(config: RunConfig, path: str) -> str:
    """none | full | offload | mlp: how activations are kept."""
    if path == "fast":
        mode = config.fast_checkpointing
        return ("offload" if config.gradient_checkpointing else "none") if mode == "auto" else mode
    return "full" if config.gradient_checkpointing else "none"


def lora_params(config: RunConfig, shape: ModelShape) -> int:
    """Trainable LoRA parameters: rank x (in + out) of every targeted projection in every layer."""
    sizes = shape.projection_sizes()
    targets = PROJECTIONS if config.lora_target.strip() == "all" else [t.strip() for t in config.lora_target.split(",")]
    per_layer = sum(config.lora_rank * (i + o) for name, (i, o) in sizes.items() if name in targets)
    return per_layer * shape.layers


def trainable_params(config: RunConfig, shape: ModelShape) -> int:
    """Parameters that get gradients and optimizer state."""
    if config.method in ("lora", "qlora"):
        return lora_params(config, shape)
    if config.method == "freeze":
        return min(config.freeze_trainable_layers, shape.layers) * shape.layer_params()
    return shape.total_params


# -- memory ---------------------------------------------------------------------------------------------------


def _layer_saved(shape: ModelShape) -> int:
    """Elements one decoder layer saves for backward per token: norms' inputs/outputs, q/k/v/attention output,
    and the MLP's gate, up, activation and product (an MoE layer counts its routed experts' share)."""
    q, kv = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    inter = shape.intermediate
    if shape.moe_layers:
        inter = shape.experts_per_token * shape.expert_intermediate + shape.shared_intermediate
    return 4 * shape.hidden + 2 * q + 4 * kv + 4 * inter


def weight_bytes(config: RunConfig, shape: ModelShape, path: str, width: int) -> dict[str, float]:
    """Frozen/base weights, by part: quantized linears keep 0.5 (4-bit) or 1 (8-bit) byte per weight plus their
    scales; the plain path's prepare_model_for_kbit_training upcasts every other weight to fp32."""
    if config.quantization == "none":
        return {"weights": shape.total_params * width}
    if config.quantization == "4bit":
        per = 0.5 + (1 / 64 + 4 / (64 * 256) if config.double_quant else 4 / 64)  # nf4 + absmax (double-quantized)
    else:
        per = 1.0 + 4 / 4096  # int8 + a row scale
    other = 2 if path == "fast" else 4
    return {"weights": shape.linear_params * per, "weights_unquantized": shape.other_params * other}


def optimizer_bytes(config: RunConfig, path: str, trainable: int, width: int) -> tuple[float, float]:
    """(optimizer state, temporary at the step) in bytes. torch's AdamW keeps two moments in the parameters' dtype
    (LoRA adapters are fp32); its foreach implementation allocates one more moment-sized temporary; the fused one
    (the fast path's) none; bitsandbytes' 8-bit AdamW one byte per moment, its 32-bit one four."""
    name = config.optimizer
    if name == "adamw_torch" and path == "fast" and config.fast_fused_optimizer:
        name = "adamw_torch_fused"
    per_moment = {"adamw_8bit": 1, "paged_adamw_8bit": 1, "paged_adamw_32bit": 4}.get(name, width)
    if name in ("sgd", "adafactor"):
        return 0.0, 0.0
    temp = trainable * per_moment if name == "adamw_torch" else 0
    return 2.0 * trainable * per_moment, float(temp)


def activation_bytes(config: RunConfig, shape: ModelShape, path: str, tokens: float, width: int) -> dict[str, float]:
    """Peak activation memory of one micro-batch of ``tokens`` computed tokens, by part."""
    mode = checkpointing(config, path)
    key = "fast" if path == "fast" else "none"
    factor, share = CAL["work_factor"][key], CAL["saved_share"][key]
    residual = 4 if (path != "fast" and config.quantization != "none") else width  # fp32 norms upcast the residual
    saved = _layer_saved(shape) * width * tokens * share
    layers = shape.layers
    if config.method == "freeze":
        layers = min(config.freeze_trainable_layers, shape.layers)  # frozen layers keep nothing for backward
    parts: dict[str, float] = {}
    if mode in ("full", "offload"):
        kept = 2 if mode == "offload" else layers  # offload: the layer in use and the one being prefetched
        parts["layer_inputs"] = kept * tokens * shape.hidden * residual
        parts["layer_backward"] = factor * saved
    elif mode == "mlp":  # attention activations kept, the MLP's gate/up recomputed
        mlp_share = 4 * shape.intermediate * width * tokens * share
        parts["saved_activations"] = layers * (saved - mlp_share) + factor * saved
    else:
        parts["saved_activations"] = layers * saved + (factor - 1) * saved
    head_rows = min(tokens, TRL_TOKEN_CHUNK)
    parts["lm_head"] = head_rows * min(shape.vocab, TRL_VOCAB_CHUNK) * width + tokens * shape.hidden * 4
    return parts


def memory_parts(config: RunConfig, shape: ModelShape, path: str, tokens: float, device: Device) -> dict[str, float]:
    """Every part of the peak, in bytes; 'peak' is their combination (activations and the optimizer's temporary
    do not coexist; gradients of a full fine-tune grow as activations are freed)."""
    width = 4 if device.is_cpu or config.precision == "fp32" else 2
    parts = weight_bytes(config, shape, path, width)
    trainable = trainable_params(config, shape)
    adapter = config.method in ("lora", "qlora")
    if adapter:
        parts["lora_adapter"] = trainable * 4.0  # peft keeps adapters in fp32
    grad_width = 4 if adapter else width
    grads = trainable * grad_width
    state, temp = optimizer_bytes(config, path, trainable, grad_width)
    parts.update(gradients=float(grads), optimizer=state)
    if config.stage in ("dpo", "kto") and config.ref_model != "none" and not adapter:
        parts["reference_model"] = shape.total_params * width
    acts = activation_bytes(config, shape, path, tokens, width)
    parts.update(acts)
    static = sum(v for k, v in parts.items() if k not in acts and k != "gradients")
    work = acts.get("layer_backward", 0.0) + acts["lm_head"]
    head_grad = shape.vocab * shape.hidden * 4.0 if not adapter and config.method == "full" else 0.0
    peak = static + max(sum(acts.values()) + (grads if adapter else head_grad), grads + max(work, temp))
    parts["optimizer_step_temp"] = temp
    parts["peak"] = peak + CAL["workspace_gib"] * GIB * (not device.is_cpu)
    return parts


def offloaded_gib(config: RunConfig, shape: ModelShape, path: str, tokens: float) -> float:
    """GiB of layer inputs the fast path's offload mode keeps in pinned host memory."""
    return shape.layers * tokens * shape.hidden * 2 / GIB if checkpointing(config, path) == "offload" else 0.0


def slack_gib(path: str, parts: dict[str, float], offloaded: float) -> float:
    """Reserved minus allocated GiB: the caching allocator's slack (see CAL)."""
    acts = sum(parts.get(k, 0.0) for k in ("layer_inputs", "layer_backward", "saved_activations", "lm_head")) / GIB
    if path == "fast":
        return CAL["slack_gib"]["fast"] + CAL["slack_offload"] * offloaded + CAL["slack_act"]["fast"] * acts
    temp = parts.get("optimizer_step_temp", 0.0) / GIB
    return CAL["slack_gib"]["none"] + CAL["slack_act"]["none"] * acts + CAL["slack_temp"] * temp


# -- speed ----------------------------------------------------------------------------------------------------


def step_flops(config: RunConfig, shape: ModelShape, mode: str, tokens: float, context: float) -> float:
    """FLOPs of one micro-batch: linear layers (forward, recompute, input and weight gradients), attention
    (causal, over each example's ``context`` tokens) and the LM head over the tokens that carry loss."""
    recompute = 1 if mode in ("full", "offload") else (0.4 if mode == "mlp" else 0)
    train_weights = config.method in ("full", "freeze")
    share = 1.0
    if config.method == "freeze":
        share = min(config.freeze_trainable_layers, shape.layers) / shape.layers
    linear = 2 * shape.active_linear_params * (1 + share * (1 + recompute + (1 if train_weights else 0)))
    lora = 6 * lora_params(config, shape) if config.method in ("lora", "qlora") else 0
    attn = 2 * 2 * shape.heads * shape.head_dim * (context + 1) / 2 * shape.layers * (1 + share * (2.5 + recompute))
    head = 2 * shape.vocab * shape.hidden * (3 + (1 if config.method == "full" else 0))
    return tokens * (linear + lora + attn + head)


def step_seconds(config: RunConfig, shape: ModelShape, path: str, tokens: float, context: float, device: Device) -> float:
    """Seconds per micro-batch: max(GPU time, host time the GPU cannot hide)."""
    key = "cpu" if device.is_cpu else ("fast" if path == "fast" else "none")
    mode = checkpointing(config, path)
    gpu = device.gpu
    compute = step_flops(config, shape, mode, tokens, context) / (gpu.bf16_tflops * 1e12 * CAL["gemm_eff"][key])
    if key == "none":
        compute += CAL["plain_bytes"] * tokens * shape.layers * (shape.hidden + shape.intermediate) / (gpu.bandwidth_gbs * 1e9)
    quantized = config.quantization != "none"
    if quantized:
        passes = 3 if mode in ("full", "offload") else 2
        moved = shape.linear_params * (2.5 if config.quantization == "4bit" else 3.0) * passes
        compute += moved / (gpu.bandwidth_gbs * 1e9 * CAL["dequant_eff"][key])
    base, per_layer, per_quant_layer = CAL["host_s"][key]
    host = base + shape.layers * (per_layer + (per_quant_layer if quantized else 0))
    return max(compute, host)


# -- data -----------------------------------------------------------------------------------------------------


def batch_tokens(config: RunConfig, path: str, lengths: list[int]) -> tuple[float, float, float]:
    """(real tokens, computed tokens, attended context) of one micro-batch. Packed rows are full; unpacked ones are
    padded to the batch's longest on the plain path and not at all on the fast path (padding-free)."""
    mean = sum(lengths) / len(lengths) if lengths else config.cutoff_len
    pairs = 2 if config.stage in PAIR_STAGES else 1
    if config.packing:
        real = config.batch_size * config.cutoff_len * CAL["pack_fill"]
        return real, real, mean
    real = config.batch_size * mean * pairs
    longest = expected_max(lengths, config.batch_size) if lengths else mean  # unknown data: full-length rows
    computed = real if path == "fast" else config.batch_size * pairs * longest
    return real, computed, mean


def expected_max(lengths: list[int], batch: int) -> float:
    """Expected longest of ``batch`` lengths drawn at random (what padding to the batch's longest costs)."""
    if not lengths:
        return 0.0
    ordered = sorted(lengths)
    n = len(ordered)
    return sum(value * (((i + 1) / n) ** batch - (i / n) ** batch) for i, value in enumerate(ordered))
