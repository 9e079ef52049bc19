"""The fast path's Triton kernels on the CPU: run under the Triton interpreter against their PyTorch references,
and compiled for the H100/H200 (sm_90) with Triton's own ptxas, which catches what only the GPU compiler rejects."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")
ROOT = Path(__file__).resolve().parents[3]


def test_kernels_match_pytorch_under_the_interpreter() -> None:
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=f"{ROOT / 'src'}{os.pathsep}{ROOT}")
    result = subprocess.run([sys.executable, str(Path(__file__).with_name("kernel_cases.py")), "cpu"],
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    passed = [line for line in result.stdout.splitlines() if line.startswith("ok ")]
    assert len(passed) == 12, result.stdout


SIGNATURES = {
    "_rmsnorm_fwd_kernel": ({"X": "*bf16", "W": "*bf16", "Y": "*bf16", "RSTD": "*fp32", "n_cols": "i32", "eps": "fp32"},
                            {"OFFSET": True, "BLOCK": 4096}),
    "_rmsnorm_bwd_kernel": ({"DY": "*bf16", "X": "*bf16", "W": "*bf16", "RSTD": "*fp32", "DX": "*bf16", "RES": "*bf16",
                             "n_cols": "i32"}, {"HAS_RES": True, "OFFSET": True, "BLOCK": 4096}),
    "_rope_kernel": ({"X": "*bf16", "COS": "*bf16", "SIN": "*bf16", "stride_t": "i32", "stride_h": "i32",
                      "cos_stride": "i32", "n_heads": "i32", "half": "i32"}, {"SIGN": -1.0, "BLOCK_H": 16, "BLOCK_D": 64}),
    "_swiglu_fwd_kernel": ({"G": "*bf16", "U": "*bf16", "M": "*bf16", "n": "i32"}, {"GELU": True, "BLOCK": 2048}),
    "_swiglu_bwd_kernel": ({"DM": "*bf16", "G": "*bf16", "U": "*bf16", "n": "i32"}, {"GELU": True, "BLOCK": 2048}),
    "_ce_grad_kernel": ({"LOGITS": "*bf16", "LABELS": "*i64", "LOSS": "*fp32", "STATS": "*fp32", "scale": "fp32",
                         "ignore_index": "i32"},
                        {"n_cols": 128256, "BLOCK": 4096}),
}


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="kernels are interpreted in this process")
@pytest.mark.parametrize("name", sorted(SIGNATURES))
def test_kernel_compiles_for_hopper(name: str) -> None:
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from tunelab.engine.fast import kernels as K

    signature, constants = SIGNATURES[name]
    source = ASTSource(fn=getattr(K, name), signature={**signature, **{k: "constexpr" for k in constants}},
                       constexprs=constants)
    try:
        compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": 8})
    except RuntimeError as exc:  # no ptxas in this Triton install
        if "ptxas" in str(exc).lower():
            pytest.skip(str(exc)[:200])
        raise
    assert compiled.asm["cubin"], "no machine code"
    assert compiled.metadata.shared < 64 * 1024
