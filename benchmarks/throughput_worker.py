"""One measurement of benchmarks/train_throughput.py, run in its own process (a crash or an OOM loses only it).

``python benchmarks/throughput_worker.py JOB_JSON`` prints one line ``RESULT {...}``. Jobs:
- throughput: build a model from a config (random weights, seeded), apply a path (plain HF+PEFT, HF+Liger,
  tunelab's fast path, Unsloth), train ``warmup + steps`` steps of AdamW on seeded random tokens, report tokens/s
  and peak memory;
- context: the longest batch-1 sequence a path trains under a per-process memory cap;
- correctness: LoRA gradients and 50-step loss curves of the fast path against plain HF on learnable data;
- profile: CUDA time of a few fast-path steps by kernel.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
from typing import Any

import torch

GiB = 2**30
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
ROPE_LLAMA3 = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
SHAPES: dict[str, dict[str, Any]] = {
    "llama8b": dict(kind="llama", vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                    num_attention_heads=32, num_key_value_heads=8, rms_norm_eps=1e-5, rope_parameters=ROPE_LLAMA3),
    "qwen7b": dict(kind="qwen2", vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                   num_attention_heads=28, num_key_value_heads=4, rms_norm_eps=1e-6,
                   rope_parameters={"rope_type": "default", "rope_theta": 1e6}),
    "llama3b": dict(kind="llama", vocab_size=128256, hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
                    num_attention_heads=24, num_key_value_heads=8, rms_norm_eps=1e-5, rope_parameters=ROPE_LLAMA3,
                    tie_word_embeddings=True),
    "tiny": dict(kind="llama", vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5, rope_parameters=ROPE_LLAMA3),
}


def model_config(shape: str, layers: int | None = None) -> Any:
    """A transformers config of the named shape (optionally with fewer layers)."""
    from transformers import LlamaConfig, Qwen2Config

    spec = dict(SHAPES[shape])
    kind = spec.pop("kind")
    tied = spec.pop("tie_word_embeddings", False)
    if layers:
        spec["num_hidden_layers"] = layers
    cls = LlamaConfig if kind == "llama" else Qwen2Config
    return cls(**spec, max_position_embeddings=131072, tie_word_embeddings=tied, use_cache=False)


# -- building a path --------------------------------------------------------------------------------------------


def build(job: dict, device: torch.device) -> tuple[Any, Any]:
    """(model, optimizer) for the job's path, method and shape; same seed and weights for every path."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM

    path, method = job["path"], job["method"]
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    cfg = model_config(job["model"], job.get("layers"))
    if path == "liger":
        import liger_kernel.transformers as liger

        apply = liger.apply_liger_kernel_to_llama if cfg.model_type == "llama" else liger.apply_liger_kernel_to_qwen2
        apply(rope=True, rms_norm=True, swiglu=True, cross_entropy=False, fused_linear_cross_entropy=True)
    torch.manual_seed(job.get("seed", 0))
    with device:
        model = AutoModelForCausalLM.from_config(cfg, dtype=job.get("dtype") and getattr(torch, job["dtype"]) or dtype,
                                                 attn_implementation="sdpa")
    fast = path.startswith("fast")
    if method == "qlora":
        from tunelab.engine.fast.quant import quantize_model_4bit

        quantize_model_4bit(model, dtype)
        if not fast:  # the usual recipe: fp32 norms/embeddings/head, checkpointing through peft
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=job.get("checkpointing", True),
                                                    gradient_checkpointing_kwargs={"use_reentrant": False})
    if not fast and job.get("checkpointing", True):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    lora = LoraConfig(r=job.get("rank", 16), lora_alpha=job.get("alpha", 16), lora_dropout=0.0,
                      target_modules=TARGETS, task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    if job.get("random_b"):
        gen = torch.Generator().manual_seed(123)
        for name, p in sorted(model.named_parameters()):
            if "lora_B" in name:
                p.data.copy_(torch.randn(p.shape, generator=gen) * job["random_b"])
    if fast:
        from tunelab.engine.fast.model import FastOptions, apply_fast_path

        apply_fast_path(model, FastOptions(**job.get("fast", {})))
    params = [p for p in model.parameters() if p.requires_grad]
    fused = fast and device.type == "cuda"
    optimizer = torch.optim.AdamW(params, lr=job.get("lr", 2e-4), weight_decay=0.0, fused=fused or None)
    model.train()
    return model, optimizer


def batches(job: dict, vocab: int, count: int) -> torch.Tensor:
    """(count, batch, seq) token ids: uniform over the vocabulary, or over a 1,000-token subset ('learnable')."""
    gen = torch.Generator().manual_seed(job.get("data_seed", 1234))
    shape = (count, job["batch"], job["seq"])
    if job.get("learnable"):
        size = min(1000, vocab // 2)
        subset = torch.randperm(vocab, generator=gen)[:size]
        return subset[torch.randint(0, size, shape, generator=gen)]
    return torch.randint(0, vocab, shape, generator=gen)


def train_steps(model: Any, optimizer: Any, data: torch.Tensor, device: torch.device,
                warmup: int) -> tuple[list[float], float]:
    """Run len(data) steps; returns (losses, seconds for the steps after ``warmup``)."""
    losses, start = [], None
    for i, ids in enumerate(data):
        if i == warmup:
            _sync(device)
            start = time.perf_counter()
        ids = ids.to(device)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    _sync(device)
    return losses, time.perf_counter() - (start or time.perf_counter())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _reset_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        if hasattr(torch._C, "_host_emptyCache"):
            torch._C._host_emptyCache()  # pinned blocks of earlier, shorter probes
        torch.cuda.reset_peak_memory_stats()


def _peak(device: torch.device) -> dict[str, float]:
    if device.type != "cuda":
        return {}
    return {"peak_gib": round(torch.cuda.max_memory_allocated() / GiB, 2),
            "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / GiB, 2)}


# -- jobs -------------------------------------------------------------------------------------------------------


def run_throughput(job: dict, device: torch.device) -> dict:
    """tokens/s and peak memory of one path."""
    if job["path"] == "unsloth":
        from unsloth_peer import build_unsloth

        model, optimizer = build_unsloth(job, device)
    else:
        model, optimizer = build(job, device)
    vocab = model.config.vocab_size if hasattr(model, "config") else SHAPES[job["model"]]["vocab_size"]
    data = batches(job, vocab, job["warmup"] + job["steps"])
    _reset_memory(device)
    losses, seconds = train_steps(model, optimizer, data, device, job["warmup"])
    tokens = job["steps"] * job["batch"] * job["seq"]
    return {"tokens_per_s": round(tokens / seconds, 1), "step_s": round(seconds / job["steps"], 4),
            "losses": [round(x, 4) for x in losses], **_peak(device)}


def run_context(job: dict, device: torch.device) -> dict:
    """Longest batch-1 sequence that trains one step within ``cap_gib``: two probes fit the memory slope, a
    third verifies the predicted length (stepping down 10% on OOM)."""
    cap = job["cap_gib"] * GiB
    torch.cuda.set_per_process_memory_fraction(cap / torch.cuda.get_device_properties(device).total_memory)
    model, optimizer = build(job, device)
    vocab = model.config.vocab_size
    probes = []

    def probe(length: int) -> float | None:
        gen = torch.Generator().manual_seed(length)
        ids = torch.randint(0, vocab, (1, length), generator=gen).to(device)
        _reset_memory(device)
        t0 = time.perf_counter()
        ok = True
        try:
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            optimizer.step()
            del loss
        except torch.OutOfMemoryError:
            ok = False
        optimizer.zero_grad(set_to_none=True)
        _sync(device)
        peak = torch.cuda.max_memory_reserved() if ok else None
        probes.append({"seq": length, "ok": ok, "peak_reserved_gib": peak and round(peak / GiB, 2),
                       "seconds": round(time.perf_counter() - t0, 1)})
        print("probe", probes[-1], flush=True)
        return peak

    start, limit = job["start"], job["max_seq"]
    best, predicted = 0, None
    p1 = probe(start)
    p2 = probe(2 * start) if p1 else None
    if p1 and p2:
        best = 2 * start
        slope = max((p2 - p1) / start, 1.0)
        predicted = int(2 * start + (cap * 0.98 - p2) / slope)
        length = min(predicted // 1024 * 1024, limit)
        while length > best:
            if probe(length):
                best = length
                break
            length = int(length * 0.9) // 1024 * 1024
    elif p1:
        best = start
    return {"max_seq": best, "predicted_seq": predicted, "capped": best == limit, "probes": probes}


def run_correctness(job: dict, device: torch.device) -> dict:
    """Fast path vs plain HF: LoRA gradients at step 0 (adapters with random B) against plain bf16 and an fp32
    reference, and the loss over ``steps`` steps on the same learnable data."""
    from tunelab.engine.fast.lora import proj_of  # noqa: F401  (fails early if the package is missing)

    grads: dict[str, dict[str, torch.Tensor]] = {}
    variants = {"ref_fp32": ("plain", "float32"), "plain": ("plain", None), "fast": ("fast", None)}
    data = None
    for name, (path, dtype) in variants.items():
        sub = {**job, "path": path, "random_b": 0.02, "dtype": dtype}
        model, _ = build(sub, device)
        data = batches(job, model.config.vocab_size, 1)[0].to(device)
        model(input_ids=data, labels=data).loss.backward()
        grads[name] = {n: p.grad.detach().float().cpu() for n, p in model.named_parameters() if p.grad is not None}
        del model
        _reset_memory(device)
    out: dict[str, Any] = {"grad_rel_err": {}}
    for a, b in (("fast", "plain"), ("fast", "ref_fp32"), ("plain", "ref_fp32")):
        errs = [float((grads[a][n] - grads[b][n]).norm() / grads[b][n].norm().clamp(min=1e-30)) for n in grads[b]]
        cos = [float(torch.nn.functional.cosine_similarity(grads[a][n].flatten(), grads[b][n].flatten(), dim=0))
               for n in grads[b]]
        out["grad_rel_err"][f"{a}_vs_{b}"] = {"max": max(errs), "mean": sum(errs) / len(errs), "min_cos": min(cos)}
    curves = {}
    for path in ("plain", "fast"):
        model, optimizer = build({**job, "path": path}, device)
        data = batches({**job, "learnable": True}, model.config.vocab_size, job["steps"])
        curves[path], _ = train_steps(model, optimizer, data, device, 0)
        del model, optimizer
        _reset_memory(device)
    rel = [abs(f - p) / abs(p) for f, p in zip(curves["fast"], curves["plain"])]
    out.update(loss_plain=[round(x, 4) for x in curves["plain"]], loss_fast=[round(x, 4) for x in curves["fast"]],
               loss_max_rel_diff=max(rel), loss_drop_plain=curves["plain"][0] - curves["plain"][-1])
    return out


def run_profile(job: dict, device: torch.device) -> dict:
    """CUDA time per kernel group over ``steps`` steps of one path (after warm-up)."""
    from torch.profiler import ProfilerActivity, profile

    model, optimizer = build(job, device)
    data = batches(job, model.config.vocab_size, job["warmup"] + job["steps"])
    train_steps(model, optimizer, data[: job["warmup"]], device, 0)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        _, seconds = train_steps(model, optimizer, data[job["warmup"]:], device, 0)
    groups: dict[str, float] = {}
    top = []
    for evt in prof.key_averages():
        us = getattr(evt, "self_device_time_total", None) or getattr(evt, "self_cuda_time_total", 0)
        if us <= 0:
            continue
        groups[_kernel_group(evt.key)] = groups.get(_kernel_group(evt.key), 0.0) + us / 1e3
        top.append((us / 1e3, evt.key[:90], evt.count))
    top.sort(reverse=True)
    total = sum(groups.values())
    return {"wall_ms_per_step": round(seconds * 1e3 / job["steps"], 1),
            "gpu_ms_per_step": round(total / job["steps"], 1),
            "groups_ms_per_step": {k: round(v / job["steps"], 1) for k, v in sorted(groups.items(), key=lambda kv: -kv[1])},
            "top_kernels": [{"ms_per_step": round(ms / job["steps"], 2), "kernel": k, "calls": c} for ms, k, c in top[:25]]}


def _kernel_group(name: str) -> str:
    low = name.lower()
    rules = [("attention", ("flash", "fmha", "attention", "sdpa", "cudnn")),
             ("gemm", ("gemm", "sm90_xmma", "cutlass", "cublas", "matmul", "wgmma", "nvjet", "xmma")),
             ("dequant_4bit", ("dequant", "kdequantize")),
             ("optimizer", ("adam", "multi_tensor")),
             ("triton_fused", ("_rmsnorm", "_rope", "_swiglu", "_ce_grad")),
             ("copy_offload", ("memcpy", "memset")),
             ("elementwise", ("elementwise", "vectorized", "unrolled", "reduce", "cat", "index", "scatter", "gather"))]
    for group, keys in rules:
        if any(k in low for k in keys):
            return group
    return "other"


def main(argv: list[str]) -> int:
    job = json.loads(argv[0])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    from unsloth_peer import save_random_model

    runner = {"throughput": run_throughput, "context": run_context, "correctness": run_correctness,
              "profile": run_profile, "save_model": save_random_model}[job["mode"]]
    t0 = time.perf_counter()
    result = runner(job, device)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    sys.exit(main(sys.argv[1:]))
