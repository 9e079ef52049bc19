"""The fast path's hand-derived backward passes against plain transformers + peft, on the CPU in fp32.

Tiny random Llama/Qwen2 models with LoRA on all seven projections (B drawn at random so every gradient is non-zero);
the same model through the fast path must give the same loss and LoRA gradients, with padding, with packed rows,
with each checkpointing mode, and for 4-bit (bitsandbytes) base weights."""

from __future__ import annotations

import pytest
import torch

from tunelab.engine.fast.lora import Unsupported
from tunelab.engine.fast.loss import linear_cross_entropy
from tunelab.engine.fast.model import FastOptions, apply_fast_path, plan_tokens

VOCAB = 300


def tiny_lm(kind: str, vocab: int = VOCAB):
    """A 2-layer random model of one family (Gemma 3: one sliding-window layer of 6 tokens, one global layer;
    Mistral: a 6-token window), with random norm weights so each family's norm convention matters."""
    import transformers as tf

    common = dict(vocab_size=vocab, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False)
    extra = {"qwen3": dict(head_dim=16), "mistral": dict(sliding_window=6),
             "gemma3_text": dict(head_dim=16, query_pre_attn_scalar=16, sliding_window=6,
                                 layer_types=["sliding_attention", "full_attention"])}.get(kind, {})
    names = {"llama": "Llama", "qwen2": "Qwen2", "qwen3": "Qwen3", "mistral": "Mistral", "gemma3_text": "Gemma3"}
    prefix = names[kind]
    config_cls = getattr(tf, f"{prefix}TextConfig" if kind == "gemma3_text" else f"{prefix}Config")
    model = getattr(tf, f"{prefix}ForCausalLM")(config_cls(**common, **extra))
    gen = torch.Generator().manual_seed(11)
    for name, param in model.named_parameters():
        if "norm" in name:
            param.data.copy_(torch.randn(param.shape, generator=gen, device="cpu") * 0.2 + (0.0 if kind == "gemma3_text" else 1.0))
    return model


def build(kind: str = "llama", qlora: bool = False, seed: int = 0, **lora_kwargs):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model = tiny_lm(kind)
    if qlora:
        from tunelab.engine.fast.quant import quantize_model_4bit

        quantize_model_4bit(model, torch.float32)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", **lora_kwargs))
    gen = torch.Generator().manual_seed(7)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.data.copy_(torch.randn(param.shape, generator=gen) * 0.05)
    return model


def lora_grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def assert_same_grads(fast, ref, tol: float = 1e-5) -> None:
    gf, gr = lora_grads(fast), lora_grads(ref)
    assert gf.keys() == gr.keys() and len(gr) == 2 * 2 * 7
    for name in gr:
        err = float((gf[name] - gr[name]).norm() / gr[name].norm())
        assert err < tol, f"{name}: relative error {err:.2e}"


def padded_batch(seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (3, 20), generator=gen)
    mask = torch.ones(3, 20, dtype=torch.long)
    mask[1, 15:] = 0
    mask[2, 8:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    labels[0, :5] = -100  # a prompt that carries no loss
    return ids, mask, labels


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
@pytest.mark.parametrize("checkpointing", ["none", "mlp", "full", "offload"])
def test_loss_and_lora_grads_match_plain_peft(kind: str, checkpointing: str) -> None:
    check_family(kind, checkpointing)


@pytest.mark.parametrize("kind", ["qwen3", "gemma3_text", "mistral"])
def test_newer_families_match_plain_peft(kind: str) -> None:
    """Qwen3 (q/k norms), Gemma 3 ((1 + w) norms, GeGLU, output norms, scaled embeddings, a 6-token sliding-window
    layer beside a global one, each with its RoPE base) and Mistral's sliding window: the 20-token rows are longer
    than the window, so a wrong band or norm shows in the loss and the gradients."""
    check_family(kind, "offload")
    ids, mask, _ = padded_batch()
    ref, fast = build(kind), build(kind)
    apply_fast_path(fast)
    with torch.no_grad():
        logits_ref = ref(input_ids=ids, attention_mask=mask).logits
        logits = fast(input_ids=ids, attention_mask=mask).logits  # fast backbone, the model's own head
    real = mask.bool()
    assert torch.allclose(logits[real], logits_ref[real], atol=1e-5)


def check_family(kind: str, checkpointing: str) -> None:
    """The fast path's loss and LoRA gradients equal plain peft's on a padded batch."""
    ids, mask, labels = padded_batch()
    ref, fast = build(kind), build(kind)
    apply_fast_path(fast, FastOptions(checkpointing=checkpointing))
    loss_ref = ref(input_ids=ids, attention_mask=mask, labels=labels).loss
    out = fast(input_ids=ids, attention_mask=mask, labels=labels)
    assert out.logits is None  # the fused loss never built them
    assert abs(out.loss.item() - loss_ref.item()) < 1e-5
    loss_ref.backward()
    out.loss.backward()
    assert_same_grads(fast, ref)


def test_packed_rows_attend_within_each_example() -> None:
    """One packed row (trl's padding-free layout: position ids restart, first label of each example -100) trains
    exactly like the same examples padded into separate rows."""
    gen = torch.Generator().manual_seed(3)
    lengths = [7, 12, 5]
    examples = [torch.randint(0, VOCAB, (n,), generator=gen) for n in lengths]
    ids = torch.cat(examples)[None]
    positions = torch.cat([torch.arange(n) for n in lengths])[None]
    labels = ids.clone()
    labels[positions == 0] = -100
    padded = torch.zeros(3, max(lengths), dtype=torch.long)
    mask = torch.zeros_like(padded)
    for i, ex in enumerate(examples):
        padded[i, : len(ex)] = ex
        mask[i, : len(ex)] = 1
    ref, fast = build(), build()
    apply_fast_path(fast)
    loss_ref = ref(input_ids=padded, attention_mask=mask, labels=padded.masked_fill(mask == 0, -100)).loss
    loss = fast(input_ids=ids, position_ids=positions, labels=labels).loss
    assert abs(loss.item() - loss_ref.item()) < 1e-5
    loss_ref.backward()
    loss.backward()
    assert_same_grads(fast, ref)


def test_chunked_mlp_and_unfused_options_match() -> None:
    ids, mask, labels = padded_batch(seed=5)
    ref, fast = build(), build()
    options = FastOptions(kernels=False, fused_ce=False, padding_free=False, mlp_chunk=16, checkpointing="offload")
    apply_fast_path(fast, options)
    loss = fast(input_ids=ids, attention_mask=mask, labels=labels).loss  # 60 tokens: 4 MLP chunks, gate/up recomputed
    loss.backward()
    loss_ref = ref(input_ids=ids, attention_mask=mask, labels=labels).loss
    loss_ref.backward()
    assert abs(loss.item() - loss_ref.item()) < 1e-5
    assert_same_grads(fast, ref)


def test_qlora_4bit_base_matches_plain_peft() -> None:
    pytest.importorskip("bitsandbytes")
    ids, mask, labels = padded_batch(seed=2)
    ref, fast = build(qlora=True), build(qlora=True)
    base = fast.base_model.model.model.layers[0].self_attn.q_proj.base_layer
    assert type(base).__name__ == "Linear4bit"
    apply_fast_path(fast, FastOptions(checkpointing="offload"))
    loss_ref = ref(input_ids=ids, attention_mask=mask, labels=labels).loss
    loss = fast(input_ids=ids, attention_mask=mask, labels=labels).loss
    assert abs(loss.item() - loss_ref.item()) < 1e-5
    loss_ref.backward()
    loss.backward()
    assert_same_grads(fast, ref)


def test_backbone_output_and_generation_fall_back_cleanly() -> None:
    ids, mask, _ = padded_batch()
    ref, fast = build(), build()
    patch = apply_fast_path(fast)
    with torch.no_grad():
        logits_ref = ref(input_ids=ids, attention_mask=mask).logits  # no labels: backbone fast path + HF head
        logits = fast(input_ids=ids, attention_mask=mask).logits
    real = mask.bool()
    assert torch.allclose(logits[real], logits_ref[real], atol=1e-5)
    prompt = ids[:1, :6]
    gen_ref = ref.generate(input_ids=prompt, max_new_tokens=5, do_sample=False)
    gen = fast.generate(input_ids=prompt, max_new_tokens=5, do_sample=False)  # KV cache: the original forwards
    assert torch.equal(gen, gen_ref)
    patch.remove()
    assert "forward" not in fast.base_model.model.__dict__ and "forward" not in fast.base_model.model.model.__dict__


@pytest.mark.parametrize("kwargs, reason", [({"lora_dropout": 0.1}, "dropout"), ({"use_dora": True}, "DoRA")])
def test_unsupported_adapters_are_refused_with_the_reason(kwargs: dict, reason: str) -> None:
    with pytest.raises(Unsupported, match=reason):
        apply_fast_path(build(**kwargs))


def test_token_plan_targets_stop_at_example_boundaries() -> None:
    ids = torch.arange(10)[None] + 1
    positions = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3, 4]])
    plan = plan_tokens(ids, None, positions, padding_free=True)
    assert plan.segments.lengths == [3, 2, 5]
    assert plan.segments.cu_seqlens.tolist() == [0, 3, 5, 10]
    assert plan.targets(ids).tolist() == [2, 3, -100, 5, -100, 7, 8, 9, 10, -100]
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    plan = plan_tokens(torch.ones(2, 4, dtype=torch.long), mask, None, padding_free=True)
    assert plan.segments.lengths == [3, 2] and plan.index.tolist() == [0, 1, 2, 4, 5]
    plan = plan_tokens(torch.ones(2, 4, dtype=torch.long), mask, None, padding_free=False)
    assert plan.index is None and plan.segments.lengths == [4, 4] and plan.segments.rows == 2


def test_linear_cross_entropy_matches_logits_and_cross_entropy() -> None:
    torch.manual_seed(0)
    h = torch.randn(50, 16, requires_grad=True)
    w = torch.randn(70, 16, requires_grad=True)
    targets = torch.randint(0, 70, (50,))
    targets[::4] = -100
    for num_items in (None, 100, torch.tensor(100)):  # a tensor count (the trainer's) divides without a host sync
        h.grad = w.grad = None
        stats: dict = {}
        loss = linear_cross_entropy(h, w, targets, num_items=num_items, chunk=8, stats=stats)
        loss.backward()
        gh, gw = h.grad.clone(), w.grad.clone()
        h.grad = w.grad = None
        logits = h @ w.t()
        ref = torch.nn.functional.cross_entropy(logits, targets, ignore_index=-100, reduction="sum")
        ref = ref / (100 if num_items is not None else int((targets != -100).sum()))
        ref.backward()
        assert abs(loss.item() - ref.item()) < 1e-5
        assert torch.allclose(gh, h.grad, atol=1e-6) and torch.allclose(gw, w.grad, atol=1e-6)
        valid = targets != -100  # the metrics trl logs: entropy and top-1 accuracy over the labelled tokens
        entropy = torch.distributions.Categorical(logits=logits.detach()[valid]).entropy().sum()
        assert stats["tokens"] == int(valid.sum()) and abs(float(stats["entropy_sum"]) - float(entropy)) < 1e-3
        assert int(stats["top1"]) == int((logits.detach().argmax(-1) == targets)[valid].sum())