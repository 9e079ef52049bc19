"""Sharded training throughput and memory: PyTorch FSDP2 and DeepSpeed ZeRO-3 (LoRA and full fine-tuning) beside a
plain single process, on a Llama-3.2-shaped model built from config (random weights, random tokens, no hub).

    python3 benchmarks/distributed.py --out benchmarks/results/h200-distributed            # nproc 1 (one GPU)
    python3 benchmarks/distributed.py --out OUT --nproc 1,2                              # two GPUs: scaling too
    python3 benchmarks/distributed.py --out /tmp/d --device-cpu                          # checks the script (gloo)

Each job is its own torchrun launch (``--standalone``, one process per GPU) running transformers' Trainer with
the FSDP2 / DeepSpeed settings tunelab generates (tunelab.core.distributed: FSDP2 sharding every decoder layer,
full state dict; ZeRO-3 with 16-bit weights gathered on save), bf16, AdamW, activation checkpointing, LoRA r16 on
all 7 projections or every parameter. Reported: tokens/s over the timed steps (all ranks), peak GiB allocated and
reserved per GPU, and scaling efficiency = tokens/s on N GPUs / (N x tokens/s on 1 GPU, same strategy).
DeepSpeed jobs are skipped (and say so) when ``import deepspeed`` fails. results.json is rewritten after each job.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[1] / "src"))

from tunelab.core.distributed import deepspeed_settings, fsdp_settings  # noqa: E402  (pure: no pydantic, no torch)

SHAPES: dict[str, dict[str, Any]] = {
    "llama1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                    num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True),
    "llama3b": dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
                    num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True),
    "tiny": dict(hidden_size=128, intermediate_size=344, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=4096, tie_word_embeddings=True),
}
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", help="folder for results.json and jobs.log")
    p.add_argument("--models", default="llama3b", help="llama1b, llama3b (comma-separated)")
    p.add_argument("--methods", default="lora,full")
    p.add_argument("--strategies", default="none,fsdp2,deepspeed_zero3", help="none = one plain process (DDP when nproc > 1)")
    p.add_argument("--nproc", default="1", help="processes (GPUs) per job, comma-separated: 1,2")
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--batch", type=int, default=2, help="per GPU")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--timeout", type=int, default=300, help="seconds per job")
    p.add_argument("--budget", type=int, default=540, help="skip jobs that would start after this many seconds")
    p.add_argument("--device-cpu", action="store_true", help="tiny model on the CPU, gloo, 1 and 2 processes, plain/DDP only: checks the script")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.device_cpu:
        args.models, args.nproc, args.seq, args.batch, args.steps, args.warmup = "tiny", "1,2", 64, 2, 3, 1
        args.strategies = "none"  # accelerate applies FSDP2 and DeepSpeed only on GPUs
    if not args.worker and not args.out:
        p.error("--out is required")
    return args


# -- the worker: one rank of one job --------------------------------------------------------------------------
def worker(spec: dict[str, Any]) -> None:
    """Train ``spec['steps']`` timed steps after the warm-up; rank 0 writes the result file."""
    import torch
    import torch.distributed as torch_dist
    from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainerCallback, TrainingArguments

    cuda = torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local_rank)
    dtype = torch.bfloat16 if cuda else torch.float32
    torch.manual_seed(0)
    config = LlamaConfig(**SHAPES[spec["model"]], max_position_embeddings=max(spec["seq"], 4096))
    with torch.device("cuda" if cuda else "cpu"):
        model = LlamaForCausalLM._from_config(config, dtype=dtype, attn_implementation="sdpa")
    model.config.use_cache = False
    if spec["method"] == "lora":
        from peft import LoraConfig, get_peft_model

        model.enable_input_require_grads()
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=LORA_TARGETS, task_type="CAUSAL_LM"))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())

    class Tokens(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 10_000

        def __getitem__(self, i: int) -> dict[str, Any]:
            ids = torch.randint(0, config.vocab_size, (spec["seq"],), generator=torch.Generator().manual_seed(i))
            return {"input_ids": ids, "labels": ids.clone(), "attention_mask": torch.ones_like(ids)}

    clock: dict[str, float] = {}

    class Timer(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if cuda:
                torch.cuda.synchronize()
            if state.global_step == spec["warmup"]:
                clock["start"] = time.perf_counter()
            clock["end"] = time.perf_counter()

    extra: dict[str, Any] = {}
    if spec["strategy"] == "fsdp2":
        extra = {"fsdp": "full_shard", "fsdp_config": spec["config_file"]}
    elif spec["strategy"].startswith("deepspeed"):
        extra = {"deepspeed": spec["config_file"]}
    args = TrainingArguments(
        output_dir=spec["scratch"], per_device_train_batch_size=spec["batch"], max_steps=spec["warmup"] + spec["steps"],
        learning_rate=1e-5, optim="adamw_torch_fused" if cuda else "adamw_torch", bf16=cuda, use_cpu=not cuda,
        gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False}, save_strategy="no",
        logging_steps=10_000, report_to=[], disable_tqdm=True, dataloader_num_workers=0,
        ddp_find_unused_parameters=False, **extra,
    )
    trainer = Trainer(model=model, args=args, train_dataset=Tokens(), callbacks=[Timer()])
    fsdp_version = trainer.accelerator.state.fsdp_plugin.fsdp_version if trainer.is_fsdp_enabled else None
    if (spec["strategy"] == "fsdp2") != (fsdp_version == 2) or spec["strategy"].startswith("deepspeed") != trainer.is_deepspeed_enabled:
        raise SystemExit(f"{spec['strategy']} asked for, but the trainer runs fsdp_version={fsdp_version} "
                         f"deepspeed={trainer.is_deepspeed_enabled}")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    memory = [torch.cuda.max_memory_allocated() / 2**30, torch.cuda.max_memory_reserved() / 2**30] if cuda else [0.0, 0.0]
    per_rank = [memory]
    if torch_dist.is_available() and torch_dist.is_initialized():
        per_rank = [None] * world
        torch_dist.all_gather_object(per_rank, memory)
    if int(os.environ.get("RANK", "0")) == 0:
        seconds = clock["end"] - clock["start"]
        result = {
            "tokens_per_s": round(spec["steps"] * spec["batch"] * spec["seq"] * world / seconds, 1),
            "step_s": round(seconds / spec["steps"], 4),
            "peak_gib_allocated": [round(m[0], 2) for m in per_rank],
            "peak_gib_reserved": [round(m[1], 2) for m in per_rank],
            "trainable_params": trainable, "params": total, "world_size": world,
            "fsdp_version": fsdp_version,
            "deepspeed": trainer.is_deepspeed_enabled,
            "device": torch.cuda.get_device_name() if cuda else "cpu",
            "torch": torch.__version__, "transformers": __import__("transformers").__version__,
        }
        Path(spec["result"]).write_text(json.dumps(result, indent=1))


# -- the driver ------------------------------------------------------------------------------------------------
def deepspeed_available() -> bool:
    """Whether DeepSpeed imports in this environment."""
    probe = subprocess.run([sys.executable, "-c", "import deepspeed"], capture_output=True, text=True)
    return probe.returncode == 0


def run_job(args: argparse.Namespace, out: Path, model: str, method: str, strategy: str, nproc: int) -> dict[str, Any]:
    """Launch one job; return its result (or its error)."""
    name = f"{model}-{method}-{strategy}-x{nproc}"
    folder = out / "jobs" / name
    folder.mkdir(parents=True, exist_ok=True)
    settings = SimpleNamespace(strategy=strategy, offload=False)
    config_file = folder / ("fsdp.json" if strategy == "fsdp2" else "deepspeed.json")
    if strategy == "fsdp2":
        config_file.write_text(json.dumps(fsdp_settings(settings), indent=1))
    elif strategy.startswith("deepspeed"):
        config_file.write_text(json.dumps(deepspeed_settings(settings), indent=1))
    spec = dict(model=model, method=method, strategy=strategy, seq=args.seq, batch=args.batch, steps=args.steps,
                warmup=args.warmup, config_file=str(config_file), result=str(folder / "result.json"),
                scratch=tempfile.mkdtemp(prefix="tunelab-dist-"))
    (folder / "spec.json").write_text(json.dumps(spec, indent=1))
    entry = [str(HERE), "--worker", str(folder / "spec.json")]
    if strategy == "none" and nproc == 1:
        argv = [sys.executable, *entry]
    else:
        argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc), *entry]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    started = time.time()
    with open(out / "jobs.log", "a") as log:
        log.write(f"\n===== {name}: {' '.join(argv)}\n")
        log.flush()
        try:
            code = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=args.timeout).returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
    row: dict[str, Any] = {"job": name, "model": model, "method": method, "strategy": strategy, "nproc": nproc,
                           "wall_s": round(time.time() - started, 1)}
    result = folder / "result.json"
    if code == 0 and result.is_file():
        row.update(json.loads(result.read_text()))
    else:
        row["error"] = f"exit {code}; see jobs.log"
    return row


def print_table(rows: list[dict[str, Any]]) -> None:
    """tokens/s, peak GiB per GPU and scaling efficiency against the same strategy on 1 GPU."""
    single = {(r["model"], r["method"], r["strategy"]): r.get("tokens_per_s") for r in rows if r["nproc"] == 1}
    print(f"{'job':44} {'tokens/s':>10} {'GiB alloc/reserved per GPU':>30} {'scaling':>8}")
    for r in rows:
        if "tokens_per_s" not in r:
            print(f"{r['job']:44} {r.get('skipped') or r.get('error')}")
            continue
        memory = " ".join(f"{a:.1f}/{b:.1f}" for a, b in zip(r["peak_gib_allocated"], r["peak_gib_reserved"]))
        base = single.get((r["model"], r["method"], r["strategy"]))
        scaling = f"{r['tokens_per_s'] / (r['nproc'] * base):.2f}" if base and r["nproc"] > 1 else "-"
        print(f"{r['job']:44} {r['tokens_per_s']:>10,.0f} {memory:>30} {scaling:>8}")


def main(argv: list[str] | None = None) -> int:
    """Run every (model, method, strategy, nproc) job; write results.json; print the table."""
    args = parse_args(argv)
    if args.worker:
        worker(json.loads(Path(args.worker).read_text()))
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    has_deepspeed = deepspeed_available()
    began = time.time()
    rows: list[dict[str, Any]] = []
    for model in args.models.split(","):
        for method in args.methods.split(","):
            for strategy in args.strategies.split(","):
                for nproc in [int(n) for n in args.nproc.split(",")]:
                    skip = None
                    if strategy.startswith("deepspeed") and not has_deepspeed:
                        skip = "deepspeed is not installed here"
                    elif time.time() - began > args.budget:
                        skip = f"over the {args.budget} s budget"
                    if skip:
                        rows.append({"job": f"{model}-{method}-{strategy}-x{nproc}", "model": model, "method": method,
                                     "strategy": strategy, "nproc": nproc, "skipped": skip})
                    else:
                        rows.append(run_job(args, out, model, method, strategy, nproc))
                    print(json.dumps(rows[-1]), flush=True)
                    tmp = out / "results.json.tmp"
                    tmp.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
                    tmp.rename(out / "results.json")
    print_table(rows)
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
