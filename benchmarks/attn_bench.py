"""Attention and GEMM micro-benchmark on the GPU (Llama-3.1-8B attention shape): FlashAttention varlen (aten),
SDPA as PyTorch picks it, and SDPA restricted to cuDNN / flash / efficient; plus a reference bf16 GEMM.
Prints one JSON line per measurement (median ms of forward+backward)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from triton.testing import do_bench

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from tunelab.engine.fast.attention import VarlenFlash  # noqa: E402


def flops(b: int, s: int, h: int, d: int) -> float:
    return 4 * b * s * s * h * d / 2 * 3.5  # causal fwd (2 matmuls) + bwd (~2.5x fwd)


def main() -> None:
    b, s, hq, hkv, d = 2, 2048, 32, 8, 128
    q = torch.randn(b * s, hq, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(b * s, hkv, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(b * s, hkv, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    cu = torch.tensor([0, s, 2 * s], device="cuda", dtype=torch.int32)
    dout = torch.randn(b * s, hq, d, device="cuda", dtype=torch.bfloat16)

    def varlen() -> None:
        VarlenFlash.apply(q, k, v, cu, s, d**-0.5).backward(dout)

    def sdpa(backend: SDPBackend | None, gqa: bool) -> None:
        qt = q.view(b, s, hq, d).transpose(1, 2)
        kt = k.view(b, s, hkv, d).transpose(1, 2)
        vt = v.view(b, s, hkv, d).transpose(1, 2)
        if not gqa:
            kt, vt = kt.repeat_interleave(hq // hkv, 1), vt.repeat_interleave(hq // hkv, 1)
        ctx = sdpa_kernel([backend]) if backend else torch.enable_grad()
        with ctx:
            out = F.scaled_dot_product_attention(qt, kt, vt, is_causal=True, enable_gqa=gqa)
        out.transpose(1, 2).reshape(b * s, hq, d).backward(dout)

    runs = {"flash_varlen": varlen, "sdpa_auto_gqa": lambda: sdpa(None, True),
            "sdpa_cudnn": lambda: sdpa(SDPBackend.CUDNN_ATTENTION, False),
            "sdpa_flash": lambda: sdpa(SDPBackend.FLASH_ATTENTION, False),
            "sdpa_efficient": lambda: sdpa(SDPBackend.EFFICIENT_ATTENTION, False)}
    for name, fn in runs.items():
        try:
            ms = do_bench(fn, warmup=50, rep=200, return_mode="median")
            print(json.dumps({"attn": name, "ms": round(ms, 3), "tflops": round(flops(b, s, hq, d) / ms / 1e9, 1)}))
        except Exception as exc:  # a backend that refuses these shapes
            print(json.dumps({"attn": name, "error": str(exc)[:200]}))
    for m, n, kk in ((4096, 14336, 4096), (4096, 1024, 4096), (4096, 4096, 14336), (4096, 128256, 4096)):
        x = torch.randn(m, kk, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(n, kk, device="cuda", dtype=torch.bfloat16)
        ms = do_bench(lambda: x @ w.t(), warmup=25, rep=100, return_mode="median")
        print(json.dumps({"gemm": [m, n, kk], "ms": round(ms, 3), "tflops": round(2 * m * n * kk / ms / 1e9, 1)}))


if __name__ == "__main__":
    main()
