"""Host (CPU) time per training step: the bare fast-path loop against `tunelab train`'s trainer, on the CPU.

    python benchmarks/host_overhead.py --out benchmarks/results/cpu-host-overhead.json [--src OTHER_CHECKOUT/src]

On a GPU the host queues kernels while the device runs them; whatever the host does per step beyond the model
(trainer bookkeeping, syncs, callbacks) is time the GPU can sit idle. This measures that host work without a GPU:
a Llama with the layer count of an 8B model (32 layers, so the same number of modules, parameters and autograd
functions per step) but tiny widths (hidden 64, 128 tokens a step), so the arithmetic is negligible and the CPU
time of a step is its host work. Each configuration runs in its own process, single-threaded; the figure is the
minimum process CPU time over the measured steps (the minimum resists other load on a shared machine).
``--src`` points at another checkout's src/ (e.g. a worktree of main) to measure the code before a change.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def write_inputs(work: Path) -> tuple[Path, Path]:
    """The narrow 32-layer model (with a ChatML tokenizer) and an alpaca file, written once."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.tiny import corpus, tiny_tokenizer
    from tunelab.core.templates import registry

    model_dir, data = work / "model32", work / "data.json"
    if not (model_dir / "config.json").is_file():
        tok = tiny_tokenizer(["<|im_start|>", "<|im_end|>"], vocab_size=480, chat_template=registry().get("chatml").source,
                             eos="<|im_end|>")
        cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=32,
                          num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=4096,
                          tie_word_embeddings=False, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                          pad_token_id=tok.pad_token_id)
        torch.manual_seed(0)
        LlamaForCausalLM(cfg).save_pretrained(model_dir)
        tok.save_pretrained(model_dir)
    if not data.is_file():
        words = sorted({w for text in corpus() for w in text.split() if w.isalpha()})
        rng = random.Random(0)
        rows = [{"instruction": " ".join(rng.choices(words, k=rng.randint(8, 30))), "input": "",
                 "output": " ".join(rng.choices(words, k=rng.randint(20, 80)))} for _ in range(200)]
        data.write_text(json.dumps(rows))
    return model_dir, data


def measure_trainer(model_dir: Path, data: Path, booster: str, work: Path, steps: int,
                    method: str = "lora") -> dict[str, Any]:
    """`tunelab train`'s trainer in this process (same code path as the CLI's trainer process), timed per step."""
    from transformers import TrainerCallback

    from tunelab.core.lf_import import load_any_config
    from tunelab.core.rundir import create_run
    from tunelab.engine import train as engine_train
    from tunelab.engine.stages import base

    overrides = [f"model={model_dir}", f"dataset={data}", "template=chatml", f"method={method}", f"booster={booster}",
                 "packing=true", "cutoff_len=64", "batch_size=2", f"max_steps={steps + 4}", "lora_rank=8",
                 "lora_target=all", "gradient_checkpointing=true", "logging_steps=1", "save_steps=100000",
                 "precision=fp32", "warmup_ratio=0"]
    config, _ = load_any_config(None, overrides)
    run = create_run(config, work / "runs")
    marks: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step >= 3:
                marks.append(time.process_time())

    original = base.StageContext.callbacks
    base.StageContext.callbacks = lambda self: [*original(self), Clock()]  # type: ignore[method-assign]
    try:
        code = engine_train.run(run.path)
    finally:
        base.StageContext.callbacks = original  # type: ignore[method-assign]
    if code != 0:
        raise SystemExit(f"training failed: {run.status().get('error')}")
    return _stats([b - a for a, b in zip(marks, marks[1:])])


def measure_bare(model_dir: Path, tokens: int, steps: int, method: str = "lora") -> dict[str, Any]:
    """The bare loop of the fast path on a packed row of ``tokens`` (three examples), AdamW, no trainer."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tunelab.engine.fast.model import FastOptions, apply_fast_path

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if method == "qlora":
        from tunelab.engine.fast.quant import quantize_model_4bit

        quantize_model_4bit(model, torch.float32)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS, task_type="CAUSAL_LM"))
    apply_fast_path(model, FastOptions(checkpointing="offload"))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(0, 400, (1, tokens))
    pos = torch.cat([torch.arange(n) for n in (tokens // 3, tokens // 3, tokens - 2 * (tokens // 3))])[None]
    times = []
    for i in range(steps + 3):
        start = time.process_time()
        loss = model(input_ids=ids, labels=ids, position_ids=pos).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        float(loss.detach())
        if i >= 3:
            times.append(time.process_time() - start)
    return _stats(times)


def _stats(seconds: list[float]) -> dict[str, Any]:
    ordered = sorted(seconds)
    return {"cpu_ms_min": round(ordered[0] * 1e3, 1), "cpu_ms_median": round(ordered[len(ordered) // 2] * 1e3, 1),
            "steps": len(ordered)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--src", default=str(ROOT / "src"), help="the src/ folder of the checkout to measure")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeat", type=int, default=2, help="processes per configuration (the minimum is kept)")
    p.add_argument("--method", default="lora", choices=["lora", "qlora"])
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one configuration in this process
    args = p.parse_args(argv)
    work = Path(os.environ.get("TUNELAB_BENCH_DIR", "/tmp/tunelab-host-overhead"))
    if args.one:
        import torch

        torch.set_num_threads(1)
        model_dir, data = write_inputs(work)
        result = (measure_bare(model_dir, 128, args.steps, args.method) if args.one == "bare"
                  else measure_trainer(model_dir, data, args.one, work, args.steps, args.method))
        print("RESULT " + json.dumps(result), flush=True)
        return 0
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([args.src, str(ROOT)]), TUNELAB_HOME=str(work / "home"),
               TUNELAB_BENCH_DIR=str(work))
    rows: dict[str, Any] = {}
    for name in ("bare", "fast", "none"):
        runs = []
        for _ in range(args.repeat):
            cmd = [sys.executable, __file__, "--out", args.out, "--steps", str(args.steps), "--method", args.method]
            proc = subprocess.run([*cmd, "--one", name], capture_output=True, text=True, env=env)
            line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                raise SystemExit(proc.stdout[-2000:] + proc.stderr[-2000:])
            runs.append(json.loads(line[len("RESULT "):]))
        rows[name] = {"cpu_ms_min": min(r["cpu_ms_min"] for r in runs), "runs": runs}
        print(name, rows[name]["cpu_ms_min"], "ms", flush=True)
    result = {"src": args.src, "method": args.method, "measured": time.strftime("%Y-%m-%d %H:%M:%S"),
              "machine": os.uname().nodename, "cpu_count": os.cpu_count(), "rows": rows,
              "trainer_over_bare": round(rows["fast"]["cpu_ms_min"] / rows["bare"]["cpu_ms_min"], 3)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
