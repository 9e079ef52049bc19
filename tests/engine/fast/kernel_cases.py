"""Each Triton kernel of the fast path against its plain PyTorch reference, on fresh random inputs.

Run as a script (``python tests/engine/fast/kernel_cases.py cpu``) so that TRITON_INTERPRET=1 can be set before
Triton decorates the kernels; test_kernels.py does that on the CPU, test_gpu.py imports it on CUDA.
"""

from __future__ import annotations

import sys
from typing import Callable

import torch

from tunelab.engine.fast import kernels as K


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    assert torch.isfinite(a).all(), "non-finite output"
    return float((a - b).norm() / b.norm().clamp(min=1e-30))


def both(fn: Callable[[], object]) -> tuple[object, object]:
    """fn() through Triton, then through the PyTorch reference."""
    K.set_torch_fallback(False)
    fast = fn()
    K.set_torch_fallback(True)
    try:
        ref = fn()
    finally:
        K.set_torch_fallback(False)
    return fast, ref


def tol(dtype: torch.dtype) -> float:
    return 1e-5 if dtype == torch.float32 else 1e-2


def case_rmsnorm(device: str, dtype: torch.dtype) -> None:
    x = torch.randn(37, 200, device=device, dtype=dtype) * 3
    w = torch.randn(200, device=device, dtype=dtype)
    dy = torch.randn_like(x)
    res = torch.randn_like(x)
    (y, r), (y0, r0) = both(lambda: K.rmsnorm_forward(x, w, 1e-5))
    assert rel_err(y, y0) < tol(dtype) and rel_err(r, r0) < 1e-5
    dx, dx0 = both(lambda: K.rmsnorm_backward(dy, x, r0, w, residual=res))
    assert rel_err(dx, dx0) < tol(dtype)
    # the reference backward is the true gradient of the reference forward
    if dtype == torch.float32:
        xg = x.clone().requires_grad_(True)
        yf = w * (xg * torch.rsqrt(xg.pow(2).mean(-1, keepdim=True) + 1e-5))
        yf.backward(dy)
        assert rel_err(dx - res, xg.grad) < 1e-5


def case_rmsnorm_gemma(device: str, dtype: torch.dtype) -> None:
    """Gemma's convention: x * rstd * (1 + w), computed in fp32 and rounded once."""
    x = torch.randn(37, 200, device=device, dtype=dtype) * 3
    w = torch.randn(200, device=device, dtype=dtype) * 0.3
    dy, res = torch.randn_like(x), torch.randn_like(x)
    (y, r), (y0, r0) = both(lambda: K.rmsnorm_forward(x, w, 1e-6, offset=True))
    assert rel_err(y, y0) < tol(dtype) and rel_err(r, r0) < 1e-5
    xf = x.float()
    hf = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6) * (1.0 + w.float())).to(dtype)
    assert torch.equal(y0, hf)  # bit-identical to transformers' Gemma3RMSNorm arithmetic
    dx, dx0 = both(lambda: K.rmsnorm_backward(dy, x, r0, w, residual=res, offset=True))
    assert rel_err(dx, dx0) < tol(dtype)
    if dtype == torch.float32:
        xg = x.clone().requires_grad_(True)
        (xg * torch.rsqrt(xg.pow(2).mean(-1, keepdim=True) + 1e-6) * (1 + w)).backward(dy)
        assert rel_err(dx - res, xg.grad) < 1e-5


def case_rope(device: str, dtype: torch.dtype) -> None:
    t, h, d = 29, 6, 48
    x = torch.randn(t, h, d, device=device, dtype=dtype)
    ang = torch.rand(t, d // 2, device=device) * 6
    cos = torch.cat([ang.cos(), ang.cos()], -1).to(dtype)
    sin = torch.cat([ang.sin(), ang.sin()], -1).to(dtype)
    y, y0 = both(lambda: K.rope_(x.clone(), cos, sin))
    assert rel_err(y, y0) < tol(dtype)
    back, _ = both(lambda: K.rope_(y.clone(), cos, sin, backward=True))
    assert rel_err(back, x) < tol(dtype) * 2  # rotating back recovers the input
    # strided view (k from a fused buffer)
    big = torch.randn(t, h + 2, d, device=device, dtype=dtype)
    out, ref = both(lambda: K.rope_(big.clone()[:, 1:1 + h], cos, sin))
    assert rel_err(out, ref) < tol(dtype)


def case_swiglu(device: str, dtype: torch.dtype, act: str = "silu") -> None:
    g = torch.randn(23, 300, device=device, dtype=dtype) * 2
    u = torch.randn_like(g)
    dm = torch.randn_like(g)
    m, m0 = both(lambda: K.swiglu_forward(g, u, act))
    assert rel_err(m, m0) < tol(dtype)

    def bwd() -> tuple[torch.Tensor, ...]:
        a, b, c = dm.clone(), g.clone(), u.clone()
        K.swiglu_backward_(a, b, c, act)
        return a, b, c

    fast, ref = both(bwd)
    for a, b in zip(fast, ref):
        assert rel_err(a, b) < tol(dtype)
    if dtype == torch.float32:
        gg, uu = g.clone().requires_grad_(True), u.clone().requires_grad_(True)
        fn = torch.nn.functional
        (fn.gelu(gg, approximate="tanh") if act == "gelu_tanh" else fn.silu(gg)).mul(uu).backward(dm)
        assert rel_err(ref[1], gg.grad) < 1e-5 and rel_err(ref[2], uu.grad) < 1e-5 and rel_err(ref[0], m0) < 1e-5


def case_geglu(device: str, dtype: torch.dtype) -> None:
    """Gemma's GeGLU: gelu(g, approximate="tanh") * u."""
    case_swiglu(device, dtype, act="gelu_tanh")


def case_cross_entropy(device: str, dtype: torch.dtype) -> None:
    n, v = 19, 5000
    logits = torch.randn(n, v, device=device, dtype=dtype) * 4
    labels = torch.randint(0, v, (n,), device=device)
    labels[3] = labels[11] = -100
    labels[5] = int(logits[5].float().argmax())  # a top-1 label

    def run() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = logits.clone()
        loss, stats = K.cross_entropy_grad_(x, labels, 0.25)
        return loss, stats, x

    (loss, stats, grad), (loss0, stats0, grad0) = both(run)
    assert rel_err(loss, loss0) < 1e-5 and rel_err(stats, stats0) < 1e-5
    assert float(grad[3].abs().max()) == 0.0
    lf = logits.float().requires_grad_(True)
    ce = torch.nn.functional.cross_entropy(lf, labels, ignore_index=-100, reduction="sum") * 0.25
    ce.backward()
    assert abs(float(loss.sum()) * 0.25 - ce.item()) < 1e-3 * abs(ce.item())
    assert rel_err(grad.float(), lf.grad) < tol(dtype)
    valid = labels != -100
    entropy = torch.distributions.Categorical(logits=lf.detach()).entropy() * valid
    assert rel_err(stats[:, 0], entropy) < 1e-4
    top1 = (lf.detach().argmax(-1) == labels) & valid
    assert stats[:, 1].tolist() == top1.float().tolist() and stats[5, 1] == 1.0


CASES = [case_rmsnorm, case_rmsnorm_gemma, case_rope, case_swiglu, case_geglu, case_cross_entropy]


def run_all(device: str) -> list[str]:
    """Run every case in fp32 and bf16; returns the names that passed (raises on the first failure)."""
    torch.manual_seed(0)
    passed = []
    for case in CASES:
        for dtype in (torch.float32, torch.bfloat16):
            case(device, dtype)
            passed.append(f"{case.__name__}[{str(dtype).split('.')[-1]}]")
    return passed


if __name__ == "__main__":
    assert K.use_triton(torch.zeros(1, device=sys.argv[1])), "Triton is not usable here (set TRITON_INTERPRET=1)"
    for name in run_all(sys.argv[1]):
        print("ok", name)
