"""The fast path on a CUDA GPU (run on the GPU machine: pytest -m gpu tests/engine/fast): Triton kernels, the
FlashAttention varlen op and whole-model LoRA/QLoRA gradients in bf16 against plain transformers + peft and an
fp32 reference."""

from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp(min=1e-30))


def test_triton_kernels_match_pytorch_on_cuda() -> None:
    from tests.engine.fast.kernel_cases import run_all

    assert len(run_all("cuda")) == 12


@pytest.mark.parametrize("mode", ["flash", "sdpa"])
def test_varlen_attention_stays_within_each_example(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from tunelab.engine.fast.attention import Segments, attend

    monkeypatch.setenv("TUNELAB_FAST_ATTN", mode)
    torch.manual_seed(0)
    lengths = [512, 512] if mode == "sdpa" else [300, 1000, 77]
    t = sum(lengths)
    q = torch.randn(t, 8, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(t, 2, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(t, 2, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], device="cuda", dtype=torch.int32)
    seg = Segments(cu, lengths, rows=2 if mode == "sdpa" else 0)
    out = attend(q, k, v, seg, 128**-0.5)
    dout = torch.randn_like(out)
    out.backward(dout)
    grads = [x.grad.clone() for x in (q, k, v)]
    ref_parts, start = [], 0
    q32, k32, v32 = (x.detach().float().requires_grad_(True) for x in (q, k, v))
    for n in lengths:
        s = slice(start, start + n)
        qt = q32[s].transpose(0, 1)[None]
        kt = k32[s].transpose(0, 1)[None].repeat_interleave(4, dim=1)
        vt = v32[s].transpose(0, 1)[None].repeat_interleave(4, dim=1)
        ref_parts.append(torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, is_causal=True)[0].transpose(0, 1))
        start += n
    ref = torch.cat(ref_parts)
    ref.backward(dout.float())
    assert rel(out, ref) < 1e-2
    for g, r in zip(grads, (q32.grad, k32.grad, v32.grad)):
        assert rel(g, r) < 2e-2


def _grads(kind: str, path: str, dtype: torch.dtype, qlora: bool = False, checkpointing: str = "none") -> dict:
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from tunelab.engine.fast.model import FastOptions, apply_fast_path
    from tunelab.engine.fast.quant import quantize_model_4bit

    torch.manual_seed(0)
    common = dict(vocab_size=1000, hidden_size=512, intermediate_size=1408, num_hidden_layers=2,
                  num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=False)
    cls, cfg = (LlamaForCausalLM, LlamaConfig) if kind == "llama" else (Qwen2ForCausalLM, Qwen2Config)
    with torch.device("cuda"):
        if kind in ("llama", "qwen2"):
            model = cls(cfg(**common)).to(dtype)
        else:  # the CPU tests' tiny families (6-token windows): here through FlashAttention's windowed varlen kernel
            from tests.engine.fast.test_fast_model import tiny_lm

            model = tiny_lm(kind, vocab=1000).to(dtype)
    if qlora:
        quantize_model_4bit(model, dtype)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
    gen = torch.Generator().manual_seed(1)
    for name, p in sorted(model.named_parameters()):
        if "lora_B" in name:
            p.data.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    if path == "fast":
        apply_fast_path(model, FastOptions(checkpointing=checkpointing))
    ids = torch.randint(0, 1000, (2, 256), generator=torch.Generator().manual_seed(2)).cuda()
    mask = torch.ones_like(ids)
    mask[1, 200:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
    return {n: p.grad.float() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
@pytest.mark.parametrize("qlora", [False, True])
def test_fast_lora_grads_agree_with_plain_to_bf16_tolerance(kind: str, qlora: bool) -> None:
    if qlora:
        pytest.importorskip("bitsandbytes")
    ref = _grads(kind, "plain", torch.float32, qlora)
    plain = _grads(kind, "plain", torch.bfloat16, qlora)
    fast = _grads(kind, "fast", torch.bfloat16, qlora, checkpointing="offload")
    assert fast.keys() == ref.keys() and len(ref) == 2 * 2 * 7
    for name in ref:
        err_fast, err_plain = rel(fast[name], ref[name]), rel(plain[name], ref[name])
        assert err_fast < max(2 * err_plain, 2e-2), f"{name}: fast {err_fast:.3e}, plain bf16 {err_plain:.3e}"


@pytest.mark.parametrize("kind", ["qwen3", "gemma3_text", "mistral"])
def test_newer_families_agree_with_plain_to_bf16_tolerance(kind: str) -> None:
    ref = _grads(kind, "plain", torch.float32)
    plain = _grads(kind, "plain", torch.bfloat16)
    fast = _grads(kind, "fast", torch.bfloat16, checkpointing="offload")
    assert fast.keys() == ref.keys() and len(ref) == 2 * 2 * 7
    for name in ref:
        err_fast, err_plain = rel(fast[name], ref[name]), rel(plain[name], ref[name])
        assert err_fast < max(2 * err_plain, 2e-2), f"{name}: fast {err_fast:.3e}, plain bf16 {err_plain:.3e}"


def test_checkpointing_modes_give_the_same_grads_on_cuda() -> None:
    base = _grads("llama", "fast", torch.bfloat16, checkpointing="none")
    for mode in ("mlp", "full", "offload"):
        other = _grads("llama", "fast", torch.bfloat16, checkpointing=mode)
        assert all(rel(other[n], base[n]) < 1e-2 for n in base), mode


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_trainer_takes_the_fast_path_by_default_on_cuda(tmp_path, tiny_model_dir, method: str) -> None:
    """`tunelab train` with the default booster (auto) on a GPU: fast path, bf16, offloaded checkpointing."""
    import json
    import subprocess
    import sys

    from tunelab.core.rundir import RunDir

    result = subprocess.run(
        [sys.executable, "-m", "tunelab.cli", "train", f"model={tiny_model_dir}", "dataset=identity", "cutoff_len=128",
         "batch_size=4", "logging_steps=1", "learning_rate=5e-3", f"method={method}", "max_steps=12",
         "save_steps=100", "gradient_checkpointing=true", "--runs-dir", str(tmp_path / "runs")],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    run = RunDir(next(l for l in result.stdout.splitlines() if l.startswith("run directory: ")).split(": ", 1)[1])
    status = run.status()
    assert status["booster"] == "fast", status
    rows = [json.loads(line) for line in run.events_file.read_text().splitlines()]
    losses = [e["loss"] for e in rows if e["type"] == "train"]
    assert len(losses) == 12 and sum(losses[-3:]) < 0.95 * sum(losses[:3]), losses
    assert (run.adapter_dir / "adapter_config.json").is_file()
