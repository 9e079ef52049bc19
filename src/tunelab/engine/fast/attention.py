"""Causal attention over a packed token stream, confined to each example (document).

q (T, Hq, D), k/v (T, Hkv, D) hold every example of a batch back to back; ``cu_seqlens`` (N+1, int32) marks where
each starts. On CUDA this is PyTorch's own FlashAttention-2 varlen kernel (the ops behind
``torch.nn.attention.varlen``), called directly so it works on torch 2.4+ and keeps grouped-query heads without
copying k/v. When every row of the batch is exactly one example (no padding, no packing), dense SDPA with
grouped-query heads is faster on an H200 (0.67 ms against 1.13 ms for one Llama-8B layer's attention forward and
backward at 2 x 2048 tokens, measured), so it is used then. Elsewhere (CPU tests) examples go through SDPA in turn.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F


@dataclass
class Segments:
    """Where each example starts in the packed stream."""

    cu_seqlens: torch.Tensor  # (N+1,) int32, on the compute device
    lengths: list[int]
    rows: int = 0  # > 0 when every row of a (rows, S) batch is exactly one example: dense attention works too

    @property
    def max_len(self) -> int:
        return max(self.lengths)


class VarlenFlash(torch.autograd.Function):
    """FlashAttention-2 varlen forward/backward from aten (causal, no dropout)."""

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: torch.Tensor, max_len: int,
                scale: float, window: int | None = None) -> torch.Tensor:
        ctx.extra = {} if window is None else {"window_size_left": window - 1, "window_size_right": 0}
        out, lse, rng, unused, _ = torch.ops.aten._flash_attention_forward(
            q, k, v, cu, cu, max_len, max_len, 0.0, True, False, scale=scale, **ctx.extra)
        ctx.save_for_backward(q, k, v, out, lse, cu, rng, unused)
        ctx.max_len, ctx.scale = max_len, scale
        return out

    @staticmethod
    def backward(ctx: Any, dout: torch.Tensor) -> tuple[Any, ...]:
        q, k, v, out, lse, cu, rng, unused = ctx.saved_tensors
        dq, dk, dv = torch.ops.aten._flash_attention_backward(
            dout.contiguous(), q, k, v, out, lse, cu, cu, ctx.max_len, ctx.max_len, 0.0, True, rng, unused,
            scale=ctx.scale, **ctx.extra)
        return dq, dk, dv, None, None, None, None


def backend() -> str:
    """auto (dense SDPA where rows are whole examples, else the varlen kernel), flash (always the varlen kernel),
    sdpa (dense where possible) or loop (SDPA per example); TUNELAB_FAST_ATTN overrides auto."""
    return os.environ.get("TUNELAB_FAST_ATTN", "auto")


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seg: Segments, scale: float,
           window: int | None = None) -> torch.Tensor:
    """Causal attention within each segment; with ``window`` (sliding-window layers) each token sees itself and
    the window - 1 tokens before it, as transformers' sliding-window mask does. Returns (T, Hq, D)."""
    if window is not None and seg.max_len <= window:
        window = None  # the window covers every example: plain causal attention
    mode = backend()
    if mode == "auto":
        mode = "sdpa" if seg.rows and window is None else "flash"
    if not q.is_cuda and mode == "flash":
        mode = "loop"
    if mode == "flash":
        return VarlenFlash.apply(q, k, v, seg.cu_seqlens, seg.max_len, scale, window)
    if mode == "sdpa" and seg.rows:
        b, s = seg.rows, q.shape[0] // seg.rows
        out = _sdpa(q.view(b, s, *q.shape[1:]), k.view(b, s, *k.shape[1:]), v.view(b, s, *v.shape[1:]), scale,
                    window)
        return out.reshape(q.shape)
    outs, start = [], 0
    for length in seg.lengths:
        sl = slice(start, start + length)
        outs.append(_sdpa(q[None, sl], k[None, sl], v[None, sl], scale, window)[0])
        start += length
    return torch.cat(outs)


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, window: int | None = None
          ) -> torch.Tensor:
    """(B, S, H, D) in and out, causal (and banded to ``window`` keys), grouped-query heads shared."""
    qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    gqa = kt.shape[1] != qt.shape[1]
    s = q.shape[1]
    if window is None or s <= window:
        out = F.scaled_dot_product_attention(qt, kt, vt, is_causal=True, scale=scale, enable_gqa=gqa)
    else:
        i = torch.arange(s, device=q.device)
        band = (i[None, :] <= i[:, None]) & (i[None, :] > i[:, None] - window)
        out = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=band, scale=scale, enable_gqa=gqa)
    return out.transpose(1, 2)
