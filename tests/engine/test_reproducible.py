"""Reproducibility through the real trainer process: the seed is applied before adapters are created, so the same
config and seed give the same loss curve, and the fast and plain paths start from the same LoRA weights."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.engine.test_train import events, train


def lora_weights(run) -> dict[str, torch.Tensor]:
    """The saved adapter's tensors."""
    from safetensors.torch import load_file

    return load_file(str(run.adapter_dir / "adapter_model.safetensors"))


def test_same_config_and_seed_give_the_same_loss_curve(tmp_path: Path, tiny_model_dir: Path) -> None:
    args = ("method=lora", "max_steps=5", "save_steps=100", "lora_rank=4", "seed=7")
    first, second = (train(tmp_path / name, tiny_model_dir, *args) for name in ("a", "b"))
    curves = [[e["loss"] for e in events(run, "train")] for run in (first, second)]
    assert len(curves[0]) == 5 and curves[0] == curves[1], curves
    assert curves[0][-1] != curves[0][0]  # the curve moved, so equal curves are not trivially equal
    a, b = lora_weights(first), lora_weights(second)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_fast_and_plain_paths_start_from_the_same_lora_weights(tmp_path: Path, tiny_model_dir: Path) -> None:
    """One step at a negligible learning rate saves (to ~1e-12) the adapter's initial weights."""
    args = ("method=lora", "max_steps=1", "save_steps=100", "lora_rank=4", "learning_rate=1e-12")
    plain = train(tmp_path / "plain", tiny_model_dir, *args, "booster=none")
    fast = train(tmp_path / "fast", tiny_model_dir, *args, "booster=fast")
    assert fast.status()["booster"] == "fast"
    p, f = lora_weights(plain), lora_weights(fast)
    a_keys = [k for k in p if "lora_A" in k]
    assert a_keys and p.keys() == f.keys()
    assert all(torch.allclose(p[k], f[k], rtol=0, atol=1e-9) for k in p), "fast and plain start apart"
    assert all(p[k].std() > 1e-3 for k in a_keys)  # lora_A is random (kaiming), so agreement is not trivial
    first = [events(run, "train")[0]["loss"] for run in (plain, fast)]
    assert abs(first[0] - first[1]) <= 1e-5 * first[0]
