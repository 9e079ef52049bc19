"""Element-wise kernels of the fast path: RMSNorm, RoPE, SwiGLU and the cross-entropy gradient.

Each op has a Triton kernel (used on CUDA tensors, and on CPU under ``TRITON_INTERPRET=1`` for tests) and a plain
PyTorch reference with the same rounding points as transformers' Llama code. ``use_triton(x)`` picks one.
Backward passes are hand-derived; the norm weights are frozen under LoRA, so no weight gradient is computed.
"""

from __future__ import annotations

import os

import torch

try:  # Triton is optional: CPU machines run the PyTorch references
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None
    tl = None

_FORCE_TORCH = False


def set_torch_fallback(on: bool) -> None:
    """Use the PyTorch references even where Triton could run (to measure the kernels' gain)."""
    global _FORCE_TORCH
    _FORCE_TORCH = on


def use_triton(x: torch.Tensor) -> bool:
    """True when ``x`` can go through the Triton kernels: CUDA, or CPU under the Triton interpreter."""
    if triton is None or _FORCE_TORCH:
        return False
    return x.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"


def _warps(block: int) -> int:
    return 4 if block <= 1024 else 8 if block <= 4096 else 16


if triton is not None:

    @triton.jit
    def _rmsnorm_fwd_kernel(X, W, Y, RSTD, n_cols, eps, OFFSET: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        mask = cols < n_cols
        x = tl.load(X + row * n_cols + cols, mask=mask, other=0.0).to(tl.float32)
        rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / n_cols + eps)
        w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
        if OFFSET:  # Gemma: (x * rstd) * (1 + w) in fp32, rounded once
            y = x * rstd * (1.0 + w)
        else:  # Llama: transformers rounds before the weight
            y = (x * rstd).to(X.dtype.element_ty).to(tl.float32) * w
        tl.store(Y + row * n_cols + cols, y.to(Y.dtype.element_ty), mask=mask)
        tl.store(RSTD + row, rstd)

    @triton.jit
    def _rmsnorm_bwd_kernel(DY, X, W, RSTD, DX, RES, n_cols, HAS_RES: tl.constexpr, OFFSET: tl.constexpr,
                            BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        mask = cols < n_cols
        dy = tl.load(DY + row * n_cols + cols, mask=mask, other=0.0).to(tl.float32)
        x = tl.load(X + row * n_cols + cols, mask=mask, other=0.0).to(tl.float32)
        w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
        if OFFSET:
            w = w + 1.0
        rstd = tl.load(RSTD + row)
        xhat = x * rstd
        dn = dy * w
        c = tl.sum(dn * xhat, axis=0) / n_cols
        dx = rstd * (dn - xhat * c)
        if HAS_RES:
            dx += tl.load(RES + row * n_cols + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(DX + row * n_cols + cols, dx.to(DX.dtype.element_ty), mask=mask)

    @triton.jit
    def _rope_kernel(X, COS, SIN, stride_t, stride_h, cos_stride, n_heads, half, SIGN: tl.constexpr,
                     BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr):
        t = tl.program_id(0).to(tl.int64)
        heads = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
        d = tl.arange(0, BLOCK_D)
        dmask = d < half
        cos = tl.load(COS + t * cos_stride + d, mask=dmask, other=0.0).to(tl.float32)
        sin = tl.load(SIN + t * cos_stride + d, mask=dmask, other=0.0).to(tl.float32) * SIGN
        mask = (heads[:, None] < n_heads) & dmask[None, :]
        ptr = X + t * stride_t + heads[:, None] * stride_h + d[None, :]
        x1 = tl.load(ptr, mask=mask, other=0.0).to(tl.float32)
        x2 = tl.load(ptr + half, mask=mask, other=0.0).to(tl.float32)
        tl.store(ptr, (x1 * cos[None, :] - x2 * sin[None, :]).to(X.dtype.element_ty), mask=mask)
        tl.store(ptr + half, (x2 * cos[None, :] + x1 * sin[None, :]).to(X.dtype.element_ty), mask=mask)

    @triton.jit
    def _gelu_tanh(g):
        # gelu(g, approximate="tanh") and its derivative, in fp32
        c = 0.7978845608028654
        inner = c * (g + 0.044715 * g * g * g)
        t = 2.0 * tl.sigmoid(2.0 * inner) - 1.0  # tanh
        act = 0.5 * g * (1.0 + t)
        dact = 0.5 * (1.0 + t) + 0.5 * g * (1.0 - t * t) * c * (1.0 + 3.0 * 0.044715 * g * g)
        return act, dact

    @triton.jit
    def _swiglu_fwd_kernel(G, U, M, n, GELU: tl.constexpr, BLOCK: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        g = tl.load(G + offs, mask=mask, other=0.0).to(tl.float32)
        u = tl.load(U + offs, mask=mask, other=0.0).to(tl.float32)
        if GELU:
            act, _ = _gelu_tanh(g)
        else:
            act = g * tl.sigmoid(g)
        act = act.to(G.dtype.element_ty).to(tl.float32)  # the activation rounds like transformers' act_fn
        tl.store(M + offs, (act * u).to(M.dtype.element_ty), mask=mask)

    @triton.jit
    def _swiglu_bwd_kernel(DM, G, U, n, GELU: tl.constexpr, BLOCK: tl.constexpr):
        # In place: G <- dG, U <- dU, DM <- silu(g) * u (the down projection's input, needed for its LoRA A grad).
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        dm = tl.load(DM + offs, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(G + offs, mask=mask, other=0.0).to(tl.float32)
        u = tl.load(U + offs, mask=mask, other=0.0).to(tl.float32)
        if GELU:
            act, dact = _gelu_tanh(g)
        else:
            sig = tl.sigmoid(g)
            act = g * sig
            dact = sig * (1.0 + g * (1.0 - sig))
        act_r = act.to(G.dtype.element_ty).to(tl.float32)
        du = dm * act_r
        dg = dm * u * dact
        tl.store(G + offs, dg.to(G.dtype.element_ty), mask=mask)
        tl.store(U + offs, du.to(U.dtype.element_ty), mask=mask)
        tl.store(DM + offs, (act_r * u).to(DM.dtype.element_ty), mask=mask)

    @triton.jit
    def _ce_grad_kernel(LOGITS, LABELS, LOSS, STATS, scale, ignore_index, n_cols: tl.constexpr, BLOCK: tl.constexpr):
        # n_cols (the vocabulary) is a compile-time constant: one model per process, and the loop bound stays static.
        # In place: each row of LOGITS becomes scale * (softmax(row) - onehot(label)); LOSS[row] = lse - logit[label];
        # STATS[row] = (entropy of softmax(row), 1.0 if the label is a top-1 logit) for the trainer's metrics.
        row = tl.program_id(0).to(tl.int64)
        base = LOGITS + row * n_cols
        label = tl.load(LABELS + row)
        m_vec = tl.full([BLOCK], float("-inf"), tl.float32)
        s_vec = tl.zeros([BLOCK], tl.float32)
        sx_vec = tl.zeros([BLOCK], tl.float32)  # sum of exp(x - m) * x, for the entropy
        for start in range(0, n_cols, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            x = tl.load(base + cols, mask=cols < n_cols, other=float("-inf")).to(tl.float32)
            new_m = tl.maximum(m_vec, x)
            live = new_m > float("-inf")
            rescale = tl.exp(m_vec - new_m)
            e = tl.exp(x - new_m)
            s_vec = tl.where(live, s_vec * rescale + e, 0.0)
            sx_vec = tl.where(live, sx_vec * rescale + tl.where(x > float("-inf"), e * x, 0.0), 0.0)
            m_vec = new_m
        m = tl.max(m_vec, axis=0)
        w = tl.where(m_vec > float("-inf"), tl.exp(m_vec - m), 0.0)
        s = tl.sum(s_vec * w, axis=0)
        sx = tl.sum(sx_vec * w, axis=0)
        lse = m + tl.log(s)
        valid = label != ignore_index
        safe = tl.where(valid, label, 0)
        target = tl.load(base + safe).to(tl.float32)
        tl.store(LOSS + row, tl.where(valid, lse - target, 0.0))
        tl.store(STATS + 2 * row, tl.where(valid, lse - sx / s, 0.0))
        tl.store(STATS + 2 * row + 1, tl.where(valid & (target >= m), 1.0, 0.0))
        coef = tl.where(valid, scale, 0.0)
        for start in range(0, n_cols, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            cmask = cols < n_cols
            x = tl.load(base + cols, mask=cmask, other=0.0).to(tl.float32)
            p = tl.exp(x - lse) - tl.where(cols == label, 1.0, 0.0)
            tl.store(base + cols, (p * coef).to(LOGITS.dtype.element_ty), mask=cmask)


# -- RMSNorm ----------------------------------------------------------------------------------------------------


def rmsnorm_forward(x: torch.Tensor, weight: torch.Tensor, eps: float, offset: bool = False
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """y = weight * bf16(x * rstd) over the last dim of a (T, d) tensor (``offset``, Gemma's convention:
    y = bf16(x * rstd * (1 + weight)) in fp32); returns (y, rstd in fp32)."""
    if use_triton(x):
        x = x.contiguous()
        y = torch.empty_like(x)
        rstd = torch.empty(x.shape[0], dtype=torch.float32, device=x.device)
        block = triton.next_power_of_2(x.shape[1])
        _rmsnorm_fwd_kernel[(x.shape[0],)](x, weight, y, rstd, x.shape[1], eps, OFFSET=offset, BLOCK=block,
                                           num_warps=_warps(block))
        return y, rstd
    xf = x.float()
    rstd = torch.rsqrt(xf.pow(2).mean(-1) + eps)
    if offset:
        return (xf * rstd[:, None] * (1.0 + weight.float())).to(x.dtype), rstd
    y = weight * (xf * rstd[:, None]).to(x.dtype)
    return y.to(x.dtype), rstd


def rmsnorm_backward(dy: torch.Tensor, x: torch.Tensor, rstd: torch.Tensor, weight: torch.Tensor,
                     residual: torch.Tensor | None = None, offset: bool = False) -> torch.Tensor:
    """dx of y = rmsnorm(x) for a frozen weight (``offset``: the weight is 1 + weight), plus ``residual`` (a
    gradient flowing past the norm) if given."""
    if use_triton(x):
        dy = dy.contiguous()
        dx = torch.empty_like(x)
        block = triton.next_power_of_2(x.shape[1])
        res = residual.contiguous() if residual is not None else dy
        _rmsnorm_bwd_kernel[(x.shape[0],)](dy, x, weight, rstd, dx, res, x.shape[1], HAS_RES=residual is not None,
                                           OFFSET=offset, BLOCK=block, num_warps=_warps(block))
        return dx
    xhat = x.float() * rstd[:, None]
    dn = dy.float() * (weight.float() + 1.0 if offset else weight.float())
    dx = rstd[:, None] * (dn - xhat * (dn * xhat).mean(-1, keepdim=True))
    if residual is not None:
        dx = dx + residual.float()
    return dx.to(x.dtype)


# -- RoPE -------------------------------------------------------------------------------------------------------


def rope_(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, backward: bool = False) -> torch.Tensor:
    """Rotate (T, H, D) ``x`` in place by (T, D) cos/sin (transformers' rotate_half layout); ``backward`` rotates
    by the opposite angle, which is the gradient of the forward rotation."""
    half = x.shape[-1] // 2
    if use_triton(x):
        assert x.stride(-1) == 1 and cos.stride(-1) == 1
        block_h = min(triton.next_power_of_2(x.shape[1]), 16)
        grid = (x.shape[0], triton.cdiv(x.shape[1], block_h))
        _rope_kernel[grid](x, cos, sin, x.stride(0), x.stride(1), cos.stride(0), x.shape[1], half,
                           SIGN=-1.0 if backward else 1.0, BLOCK_H=block_h, BLOCK_D=triton.next_power_of_2(half),
                           num_warps=4)
        return x
    c = cos[:, None, :half].float()
    s = sin[:, None, :half].float() * (-1.0 if backward else 1.0)
    x1, x2 = x[..., :half].float(), x[..., half:].float()
    out = torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1)
    x.copy_(out.to(x.dtype))
    return x


# -- SwiGLU -----------------------------------------------------------------------------------------------------

_EW_BLOCK = 2048


GATED_ACTS = ("silu", "gelu_tanh")  # SwiGLU (Llama, Qwen, Mistral) and GeGLU with tanh gelu (Gemma)


def _act_and_grad(gf: torch.Tensor, act: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The gate activation and its derivative, in fp32."""
    if act == "gelu_tanh":
        c = 0.7978845608028654
        t = torch.tanh(c * (gf + 0.044715 * gf.pow(3)))
        return 0.5 * gf * (1.0 + t), 0.5 * (1.0 + t) + 0.5 * gf * (1.0 - t * t) * c * (1.0 + 3 * 0.044715 * gf * gf)
    sig = torch.sigmoid(gf)
    return gf * sig, sig * (1.0 + gf * (1.0 - sig))


def swiglu_forward(g: torch.Tensor, u: torch.Tensor, act: str = "silu") -> torch.Tensor:
    """act(g) * u, rounded like transformers (activation output rounded, then the product); ``act`` is silu
    (SwiGLU) or gelu_tanh (GeGLU)."""
    if use_triton(g):
        m = torch.empty_like(g)
        n = g.numel()
        _swiglu_fwd_kernel[(triton.cdiv(n, _EW_BLOCK),)](g, u, m, n, GELU=act == "gelu_tanh", BLOCK=_EW_BLOCK,
                                                         num_warps=8)
        return m
    if act == "gelu_tanh":
        return torch.nn.functional.gelu(g, approximate="tanh") * u
    return torch.nn.functional.silu(g) * u


def swiglu_backward_(dm: torch.Tensor, g: torch.Tensor, u: torch.Tensor, act: str = "silu") -> None:
    """In place: g <- dL/dg, u <- dL/du, dm <- act(g) * u (the recomputed product)."""
    if use_triton(g):
        assert dm.is_contiguous() and g.is_contiguous() and u.is_contiguous()
        n = g.numel()
        _swiglu_bwd_kernel[(triton.cdiv(n, _EW_BLOCK),)](dm, g, u, n, GELU=act == "gelu_tanh", BLOCK=_EW_BLOCK,
                                                         num_warps=8)
        return
    gf, uf, dmf = g.float(), u.float(), dm.float()
    act_f, dact = _act_and_grad(gf, act)
    act = act_f.to(g.dtype).float()
    dg = dmf * uf * dact
    du = dmf * act
    dm.copy_((act * uf).to(dm.dtype))
    g.copy_(dg.to(g.dtype))
    u.copy_(du.to(u.dtype))


# -- cross-entropy gradient -------------------------------------------------------------------------------------


def cross_entropy_grad_(logits: torch.Tensor, labels: torch.Tensor, scale: float,
                        ignore_index: int = -100) -> tuple[torch.Tensor, torch.Tensor]:
    """In place: logits (n, V) become scale * (softmax - onehot(label)) (zero rows for ignored labels).
    Returns the per-row loss (lse - logit[label]) and (n, 2) stats (entropy, label is a top-1 logit), in fp32 and
    zero where the label is ignored."""
    if use_triton(logits):
        assert logits.is_contiguous()
        loss = torch.empty(logits.shape[0], dtype=torch.float32, device=logits.device)
        stats = torch.empty(logits.shape[0], 2, dtype=torch.float32, device=logits.device)
        _ce_grad_kernel[(logits.shape[0],)](logits, labels, loss, stats, scale, ignore_index, n_cols=logits.shape[1],
                                            BLOCK=4096, num_warps=16)
        return loss, stats
    lf = logits.float()
    valid = labels != ignore_index
    safe = labels.clamp(min=0)
    lse = torch.logsumexp(lf, dim=-1)
    target = lf.gather(1, safe[:, None])[:, 0]
    zero = torch.zeros_like(lse)
    loss = torch.where(valid, lse - target, zero)
    p = torch.exp(lf - lse[:, None])
    entropy = torch.where(valid, lse - (p * lf).sum(-1), zero)
    top1 = (valid & (target >= lf.amax(-1))).float()
    p[torch.arange(p.shape[0], device=p.device), safe] -= 1.0
    p *= (valid.float() * scale)[:, None]
    logits.copy_(p.to(logits.dtype))
    return loss, torch.stack([entropy, top1], dim=1)
