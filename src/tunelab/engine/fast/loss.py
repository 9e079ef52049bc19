"""Fused LM head + cross-entropy that never holds the full (tokens, vocab) logits.

Only positions with a label go through the head, in chunks: each chunk's logits are made, turned in place into
their gradient softmax - onehot by one kernel (which also yields each token's entropy and whether its label is a
top-1 logit, for the trainer's metrics), and multiplied back into the hidden-state gradient, all in the forward
pass; backward only scales what was kept by 1/n. The peak is one (chunk, vocab) bf16 block (512 MiB).
"""

from __future__ import annotations

from typing import Any

import torch

from tunelab.engine.fast import kernels as K
from tunelab.engine.fast.lora import mm_f32

IGNORE = -100
CHUNK_BYTES = 1 << 29  # one (chunk, vocab) bf16 block: 2,048 tokens of a 128k vocabulary


class LinearCrossEntropy(torch.autograd.Function):
    """Summed token cross-entropy of h @ W^T against targets, divided by ``denom`` (a number or a 0-d tensor, so the
    trainer's token count needs no host sync) or by the labelled-token count. ``stats``, a dict when given, receives
    the summed entropy and the count of top-1 labels (0-d device tensors) and the labelled-token count (an int)."""

    @staticmethod
    def forward(ctx: Any, h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, denom: Any,
                chunk: int | None, stats: dict | None = None) -> torch.Tensor:
        keep = (targets != IGNORE).nonzero().squeeze(1)
        n = int(keep.numel())
        if denom is None:
            denom = float(max(n, 1))
        chunk = chunk or max(128, CHUNK_BYTES // (weight.shape[0] * h.element_size()))
        grad_h = torch.zeros_like(h) if ctx.needs_input_grad[0] else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if ctx.needs_input_grad[1] else None
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        sums = torch.zeros(2, dtype=torch.float32, device=h.device)
        w = weight if weight.dtype == h.dtype else weight.to(h.dtype)
        for s in range(0, n, chunk):
            idx = keep[s:s + chunk]
            hc = h.index_select(0, idx)
            logits = hc @ w.t()
            loss, row_stats = K.cross_entropy_grad_(logits, targets.index_select(0, idx), 1.0)
            total += loss.sum()
            sums += row_stats.sum(0)
            if grad_h is not None:
                grad_h.index_copy_(0, idx, logits @ w)
            if grad_w is not None:
                grad_w += mm_f32(logits.t(), hc)
            del logits, hc
        if stats is not None:
            stats.update(entropy_sum=sums[0], top1=sums[1], tokens=n)
        ctx.save_for_backward(*(t for t in (grad_h, grad_w) if t is not None))
        ctx.has = (grad_h is not None, grad_w is not None)
        ctx.weight_dtype = weight.dtype
        ctx.denom = denom
        return total / denom

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        saved = list(ctx.saved_tensors)
        gh = saved.pop(0) if ctx.has[0] else None
        gw = saved.pop(0) if ctx.has[1] else None
        scale = grad / ctx.denom  # 0-d fp32 on the device (no host sync), not rounded to bf16 before it multiplies
        grad_h = gh * scale if gh is not None else None
        grad_w = (gw * scale).to(ctx.weight_dtype) if gw is not None else None
        return grad_h, grad_w, None, None, None, None


def linear_cross_entropy(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         num_items: Any = None, chunk: int | None = None, stats: dict | None = None) -> torch.Tensor:
    """Cross-entropy of the LM head over (N, d) hidden states and (N,) targets (-100 ignored); divided by
    ``num_items`` when given (transformers' num_items_in_batch, a number or a tensor), else averaged over the
    labelled tokens. ``stats`` (a dict) receives entropy_sum, top1 and tokens (see LinearCrossEntropy)."""
    if isinstance(num_items, torch.Tensor):
        num_items = num_items.to(h.device, torch.float32)
    return LinearCrossEntropy.apply(h, weight, targets, num_items, chunk, stats)
