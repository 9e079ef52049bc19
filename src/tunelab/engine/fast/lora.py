"""LoRA projections with hand-derived backward passes, fused with the RMSNorm, RoPE and SwiGLU around them.

Three autograd Functions cover a Llama-style decoder layer (the attention itself sits between them):

- ``NormQKV``:  h -> rmsnorm -> q, k, v (+ LoRA, shared LoRA-A matmul) -> RoPE on q, k.   Saves h, rstd, x@A^T.
- ``OutProj``:  (attn, residual) -> residual + attn @ Wo^T (+ LoRA).                      Saves attn, x@A^T.
- ``NormMLP``:  h -> h + down(silu(gate(n)) * up(n)), n = rmsnorm(h), LoRA on all three.  Saves h, rstd, gate,
  up and x@A^T (or only h, rstd with ``recompute``: gate/up are recomputed in backward), in token chunks.
Family variants: per-head q/k norms before RoPE (Qwen3, Gemma 3); Gemma's (1 + w) norms, GeGLU, and ``PostNorm``
(its norms on the attention and MLP outputs before the residual add).

For frozen base weights W (LoRA, QLoRA) y = x W^T + s (x A^T) B^T has
dx = dy W + s (dy B) A,  dA = s (dy B)^T x,  dB = s dy^T (x A^T);  W gets no gradient. 4-bit weights are
dequantized just before each use and dropped after.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from tunelab.engine.fast import kernels as K


class Unsupported(ValueError):
    """A model or adapter setting the fast path does not cover; the caller falls back to plain transformers."""


@dataclass
class Proj:
    """One linear projection: its frozen base layer and, if adapted, the LoRA A/B parameters and scale."""

    base: Any
    A: torch.Tensor | None = None
    B: torch.Tensor | None = None
    scale: float = 0.0

    @property
    def rank(self) -> int:
        return 0 if self.A is None else self.A.shape[0]

    @property
    def bias(self) -> torch.Tensor | None:
        return getattr(self.base, "bias", None)

    def weight(self, dtype: torch.dtype) -> torch.Tensor:
        """The dense (out, in) base weight in ``dtype`` (4-bit weights are dequantized)."""
        w = self.base.weight
        state = getattr(w, "quant_state", None)
        if state is not None:
            import bitsandbytes.functional as bnbf

            w = bnbf.dequantize_4bit(w.data, state)
        return w if w.dtype == dtype else w.to(dtype)


def proj_of(module: Any) -> Proj:
    """The Proj of a plain linear layer or a peft LoRA layer (one active vanilla adapter, no dropout)."""
    if not hasattr(module, "lora_A"):
        _check_base(module)
        return Proj(module)
    base = module.get_base_layer()
    _check_base(base)
    if module.merged or module.disable_adapters:
        return Proj(base)
    names = [n for n in module.active_adapters if n in module.lora_A]
    if not names:
        return Proj(base)
    if len(names) > 1:
        raise Unsupported(f"several active LoRA adapters ({', '.join(names)})")
    name = names[0]
    if name in getattr(module, "lora_variant", {}):
        raise Unsupported(f"LoRA variant {type(module.lora_variant[name]).__name__} (DoRA and friends)")
    if not isinstance(module.lora_dropout[name], torch.nn.Identity):
        raise Unsupported("lora_dropout > 0")
    return Proj(base, module.lora_A[name].weight, module.lora_B[name].weight, float(module.scaling[name]))


def _check_base(base: Any) -> None:
    w = getattr(base, "weight", None)
    if w is None or w.ndim != 2 and getattr(w, "quant_state", None) is None:
        raise Unsupported(f"{type(base).__name__} is not a linear layer the fast path knows")
    if type(base).__name__ not in ("Linear", "Linear4bit"):
        raise Unsupported(f"{type(base).__name__} base layers (8-bit and other quantizers)")


def mm_f32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b with an fp32 result (for parameter gradients, which are summed over many tokens)."""
    if a.dtype == torch.float32:
        return a @ b
    return (a @ b).float()


# -- projection groups sharing one input -----------------------------------------------------------------------


def group_forward(x: torch.Tensor, projs: list[Proj], residual: torch.Tensor | None = None
                  ) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """y_j = x W_j^T (+ b_j) + s_j (x A_j^T) B_j^T for projections sharing input x (T, in); one x @ [A_j]^T
    matmul serves every adapter. ``residual`` (single projection only) is added in the GEMM epilogue."""
    adapted = [p for p in projs if p.A is not None]
    xa = x @ torch.cat([p.A for p in adapted]).to(x.dtype).t() if adapted else None
    outs, offset = [], 0
    for p in projs:
        w = p.weight(x.dtype)
        if residual is not None:
            y = torch.addmm(residual, x, w.t())
        elif p.bias is not None:
            y = torch.addmm(p.bias.to(x.dtype), x, w.t())
        else:
            y = x @ w.t()
        del w
        if p.A is not None:
            y.addmm_(xa[:, offset:offset + p.rank], p.B.to(x.dtype).t(), alpha=p.scale)
            offset += p.rank
        outs.append(y)
    return outs, xa


def group_backward(dys: list[torch.Tensor], x: torch.Tensor, xa: torch.Tensor | None, projs: list[Proj]
                   ) -> tuple[torch.Tensor, list[tuple[torch.Tensor | None, torch.Tensor | None]]]:
    """dx and the (dA, dB) of each projection, for frozen base weights."""
    dx = None
    for p, dy in zip(projs, dys):
        w = p.weight(dy.dtype)
        if dx is None:
            dx = dy @ w
        else:
            dx.addmm_(dy, w)
        del w
    grads: list[tuple[torch.Tensor | None, torch.Tensor | None]] = [(None, None)] * len(projs)
    adapted = [i for i, p in enumerate(projs) if p.A is not None]
    if adapted:
        g = torch.cat([dys[i] @ (projs[i].B.to(dys[i].dtype) * projs[i].scale) for i in adapted], dim=1)
        dx.addmm_(g, torch.cat([projs[i].A for i in adapted]).to(dx.dtype))
        d_a = mm_f32(g.t(), x)
        offset = 0
        for i in adapted:
            p = projs[i]
            ga = d_a[offset:offset + p.rank]
            gb = mm_f32(dys[i].t(), xa[:, offset:offset + p.rank]) * p.scale
            grads[i] = (ga.to(p.A.dtype), gb.to(p.B.dtype))
            offset += p.rank
    return dx, grads


def _flat_lora(projs: list[Proj]) -> list[torch.Tensor | None]:
    return [t for p in projs for t in (p.A, p.B)]


def _flat_grads(grads: list[tuple[Any, Any]]) -> list[Any]:
    return [t for pair in grads for t in pair]


# -- attention input: norm -> q, k, v -> RoPE ------------------------------------------------------------------


@dataclass
class HeadNorm:
    """A per-head RMSNorm on q or k (Qwen3, Gemma 3): its frozen weight (head_dim,) and epsilon."""

    weight: torch.Tensor
    eps: float


@dataclass
class QKVSpec:
    projs: list[Proj]
    eps: float
    q_heads: int
    kv_heads: int
    head_dim: int
    offset: bool = False  # Gemma's norms: x * rstd * (1 + w)
    q_norm: HeadNorm | None = None
    k_norm: HeadNorm | None = None


def _head_norm(x: torch.Tensor, norm: HeadNorm | None, offset: bool) -> tuple[torch.Tensor, Any]:
    """Normalise each (token, head) row of a (T, H, D) tensor; returns it and the rstd (None without a norm)."""
    if norm is None:
        return x, None
    y, rstd = K.rmsnorm_forward(x.reshape(-1, x.shape[-1]), norm.weight, norm.eps, offset)
    return y.view(x.shape), rstd


def _head_norm_backward(dy: torch.Tensor, x: torch.Tensor, rstd: torch.Tensor, norm: HeadNorm,
                        offset: bool) -> torch.Tensor:
    d = x.shape[-1]
    return K.rmsnorm_backward(dy.reshape(-1, d), x.reshape(-1, d), rstd, norm.weight, offset=offset).view(x.shape)


class NormQKV(torch.autograd.Function):
    """(h, norm weight, cos, sin) -> rotated q (T, Hq, D), k (T, Hkv, D) and v (T, Hkv, D)."""

    @staticmethod
    def forward(ctx: Any, h: torch.Tensor, norm_w: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                spec: QKVSpec, *lora: Any) -> tuple[torch.Tensor, ...]:
        n, rstd = K.rmsnorm_forward(h, norm_w, spec.eps, spec.offset)
        (q, k, v), xa = group_forward(n, spec.projs)
        del n
        t = h.shape[0]
        q_raw = q.view(t, spec.q_heads, spec.head_dim)
        k_raw = k.view(t, spec.kv_heads, spec.head_dim)
        v = v.view(t, spec.kv_heads, spec.head_dim)
        q, q_rstd = _head_norm(q_raw, spec.q_norm, spec.offset)
        k, k_rstd = _head_norm(k_raw, spec.k_norm, spec.offset)
        K.rope_(q, cos, sin)
        K.rope_(k, cos, sin)
        heads = [q_raw, q_rstd] if spec.q_norm is not None else []
        heads += [k_raw, k_rstd] if spec.k_norm is not None else []
        ctx.save_for_backward(h, rstd, xa, cos, sin, norm_w, *heads)
        ctx.spec = spec
        return q, k, v

    @staticmethod
    def backward(ctx: Any, dq: torch.Tensor, dk: torch.Tensor, dv: torch.Tensor) -> tuple[Any, ...]:
        h, rstd, xa, cos, sin, norm_w, *heads = ctx.saved_tensors
        spec: QKVSpec = ctx.spec
        t = h.shape[0]
        dq = K.rope_(dq.contiguous(), cos, sin, backward=True)  # the attention's fresh gradient: rotate in place
        dk = K.rope_(dk.contiguous(), cos, sin, backward=True)
        if spec.q_norm is not None:
            q_raw, q_rstd, *heads = heads
            dq = _head_norm_backward(dq, q_raw, q_rstd, spec.q_norm, spec.offset)
        if spec.k_norm is not None:
            k_raw, k_rstd = heads
            dk = _head_norm_backward(dk, k_raw, k_rstd, spec.k_norm, spec.offset)
        n, _ = K.rmsnorm_forward(h, norm_w, spec.eps, spec.offset)
        dn, grads = group_backward([dq.reshape(t, -1), dk.reshape(t, -1), dv.reshape(t, -1)], n, xa, spec.projs)
        del n
        dh = K.rmsnorm_backward(dn, h, rstd, norm_w, offset=spec.offset)
        return (dh, None, None, None, None, *_flat_grads(grads))


# -- attention output projection + residual -------------------------------------------------------------------


class OutProj(torch.autograd.Function):
    """(attn (T, Hq*D), residual (T, d) or None) -> residual + o_proj(attn) (o_proj(attn) alone without one)."""

    @staticmethod
    def forward(ctx: Any, attn: torch.Tensor, residual: torch.Tensor | None, proj: Proj, *lora: Any) -> torch.Tensor:
        (y,), xa = group_forward(attn, [proj], residual=residual if proj.bias is None else None)
        if proj.bias is not None and residual is not None:
            y += residual
        ctx.save_for_backward(attn, xa)
        ctx.proj, ctx.has_residual = proj, residual is not None
        return y

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[Any, ...]:
        attn, xa = ctx.saved_tensors
        dy = dy.contiguous()
        dattn, grads = group_backward([dy], attn, xa, [ctx.proj])
        return (dattn, dy if ctx.has_residual else None, None, *_flat_grads(grads))


class PostNorm(torch.autograd.Function):
    """(x, residual) -> residual + rmsnorm(x): Gemma's norms on the attention and MLP outputs."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, residual: torch.Tensor, w: torch.Tensor, eps: float,
                offset: bool) -> torch.Tensor:
        y, rstd = K.rmsnorm_forward(x, w, eps, offset)
        ctx.save_for_backward(x, rstd, w)
        ctx.offset = offset
        return y.add_(residual)

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[Any, ...]:
        x, rstd, w = ctx.saved_tensors
        dy = dy.contiguous()
        return K.rmsnorm_backward(dy, x, rstd, w, offset=ctx.offset), dy, None, None, None


# -- MLP block: norm -> gate/up -> SwiGLU -> down -> + residual -------------------------------------------------


@dataclass
class MLPSpec:
    gate: Proj
    up: Proj
    down: Proj
    eps: float
    recompute: bool = False  # save only the block input; recompute gate/up in backward
    chunk: int = 16384  # tokens per chunk, which bounds the (chunk, intermediate) temporaries
    offset: bool = False  # Gemma's norm: x * rstd * (1 + w)
    act: str = "silu"  # the gate's activation: silu (SwiGLU) or gelu_tanh (GeGLU)
    residual: bool = True  # add the block input to the output (off: Gemma normalises the output first)


def _mlp_inner(n: torch.Tensor, spec: MLPSpec) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    (g, u), xa = group_forward(n, [spec.gate, spec.up])
    return g, u, xa


class NormMLP(torch.autograd.Function):
    """h -> h + down(silu(gate(rmsnorm(h))) * up(rmsnorm(h)))."""

    @staticmethod
    def forward(ctx: Any, h: torch.Tensor, norm_w: torch.Tensor, spec: MLPSpec, *lora: Any) -> torch.Tensor:
        out = torch.empty_like(h)
        rstd = torch.empty(h.shape[0], dtype=torch.float32, device=h.device)
        xas, xds, gs, us = [], [], [], []
        for s in range(0, h.shape[0], spec.chunk):
            hc = h[s:s + spec.chunk]
            n, r = K.rmsnorm_forward(hc, norm_w, spec.eps, spec.offset)
            rstd[s:s + spec.chunk] = r
            g, u, xa = _mlp_inner(n, spec)
            del n
            m = K.swiglu_forward(g, u, spec.act)
            res = hc if spec.residual else None
            (y,), xd = group_forward(m, [spec.down], residual=res if spec.down.bias is None else None)
            if spec.down.bias is not None and res is not None:
                y += hc
            out[s:s + spec.chunk] = y
            del m, y
            xas.append(xa)
            xds.append(xd)
            if not spec.recompute:
                gs.append(g)
                us.append(u)
        ctx.n_chunks = len(xas)
        ctx.lora = (xas[0] is not None, xds[0] is not None)
        ctx.save_for_backward(h, rstd, norm_w, *[x for x in xas + xds if x is not None], *gs, *us)
        ctx.spec = spec
        return out

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[Any, ...]:
        spec: MLPSpec = ctx.spec
        h, rstd, norm_w, *rest = ctx.saved_tensors
        c = ctx.n_chunks
        xas = [rest.pop(0) for _ in range(c)] if ctx.lora[0] else [None] * c
        xds = [rest.pop(0) for _ in range(c)] if ctx.lora[1] else [None] * c
        gs, us = (rest[:c], rest[c:]) if rest else ([None] * c, [None] * c)
        del rest
        dy = dy.contiguous()
        dh = torch.empty_like(h)
        total: list[list[torch.Tensor | None]] = [[None, None] for _ in range(3)]
        for i, s in enumerate(range(0, h.shape[0], spec.chunk)):
            hc, dyc = h[s:s + spec.chunk], dy[s:s + spec.chunk]
            n, _ = K.rmsnorm_forward(hc, norm_w, spec.eps, spec.offset)
            g, u = gs[i], us[i]
            if g is None:
                g, u, _ = _mlp_inner(n, spec)
            dm, gd = _down_input_grad(dyc, spec.down)
            K.swiglu_backward_(dm, g, u, spec.act)  # g <- dg, u <- du, dm <- act(g) * u
            down = [None, None]
            if gd is not None:
                down = [mm_f32(gd.t(), dm).to(spec.down.A.dtype),
                        (mm_f32(dyc.t(), xds[i]) * spec.down.scale).to(spec.down.B.dtype)]
            del dm, gd
            dn, gu = group_backward([g, u], n, xas[i], [spec.gate, spec.up])
            del g, u, n
            dh[s:s + spec.chunk] = K.rmsnorm_backward(dn, hc, rstd[s:s + spec.chunk], norm_w,
                                                      residual=dyc if spec.residual else None, offset=spec.offset)
            del dn
            for slot, pair in zip(total, [*gu, down]):
                for j in range(2):
                    if pair[j] is not None:
                        slot[j] = pair[j] if slot[j] is None else slot[j] + pair[j]
        return (dh, None, None, *[t for slot in total for t in slot])


def _down_input_grad(dy: torch.Tensor, proj: Proj) -> tuple[torch.Tensor, torch.Tensor | None]:
    """dm = dy Wd + s (dy Bd) Ad, and s dy Bd (the down LoRA's A gradient needs m, known only after SwiGLU)."""
    w = proj.weight(dy.dtype)
    dm = dy @ w
    del w
    if proj.A is None:
        return dm, None
    gd = dy @ (proj.B.to(dy.dtype) * proj.scale)
    dm.addmm_(gd, proj.A.to(dm.dtype))
    return dm, gd
