"""What users get: `tunelab train` end to end on a real-shaped random-weight model, beside trl's own recipe.

    python benchmarks/product_bench.py --out benchmarks/results/h200-product      (on a GPU)
    python benchmarks/product_bench.py --out /tmp/pb --cpu                          (checks this script)
    python benchmarks/product_bench.py --out benchmarks/results/h200-product.json --table   (the README table)

Writes a Llama-3.1-8B-shaped model (random bf16 weights, seeded; a ChatML BPE tokenizer trained on the shipped
data) and an alpaca-format dataset of long answers, then runs, each in its own process and in the same run:
- `tunelab train` (the product: config, data pipeline, trl SFTTrainer, events, TensorBoard) with the fast path and
  with plain transformers (booster none), packing on and off, LoRA and QLoRA;
- trl's SFTTrainer + peft written the way their docs show (benchmarks/recipe_peer.py), and Unsloth's recipe
  (FastLanguageModel + SFTTrainer) where ``--unsloth-pythonpath`` names an environment holding it;
- the bare training loop of benchmarks/throughput_worker.py on the same model shape (the trainer-gap reference).
tokens/s is real (non-pad) tokens over the steps after the warm-up; memory is peak reserved and allocated GiB and
the pinned host GiB the fast path's offload held. results.json is rewritten after each run; the table is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
COMMON = ["template=chatml", "lora_rank=16", "lora_target=all", "gradient_checkpointing=true", "logging_steps=1",
          "save_steps=100000", "learning_rate=2e-4", "warmup_ratio=0"]
# name -> (method, booster, packing, extra overrides)
RUNS: dict[str, tuple[str, str, bool, list[str]]] = {
    "lora-fast-pack": ("lora", "fast", True, []),
    "lora-fast-nopack": ("lora", "fast", False, []),
    "lora-fast-mlp-pack": ("lora", "fast", True, ["fast_checkpointing=mlp"]),
    "lora-none-pack": ("lora", "none", True, []),
    "lora-none-nopack": ("lora", "none", False, []),
    "qlora-fast-pack": ("qlora", "fast", True, []),
    "qlora-none-pack": ("qlora", "none", True, []),
}
DEFAULT_RUNS = "lora-fast-pack,lora-fast-nopack,lora-none-pack,qlora-fast-pack,qlora-none-pack"
PEERS = {"trl-lora-pack": ("trl", "lora", True), "trl-qlora-pack": ("trl", "qlora", True),
         "unsloth-lora-pack": ("unsloth", "lora", True), "unsloth-qlora-pack": ("unsloth", "qlora", True)}
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
# Extra environment of the bare loop: none now. benchmarks/results/h100-product.json's bare rows and tunelab rows ran
# with PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True (then tunelab train's default, since dropped: no gain seen).
SAME_ALLOCATOR: dict[str, str] = {}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--model", default="llama8b", help="a shape of benchmarks/throughput_worker.py")
    p.add_argument("--layers", type=int, default=None, help="fewer layers (smoke runs)")
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=10, help="measured steps after the warm-up")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--runs", default=DEFAULT_RUNS)
    p.add_argument("--peers", default="trl-lora-pack")
    p.add_argument("--bare", default="lora,qlora", help="methods of the bare-loop reference ('' = none)")
    p.add_argument("--unsloth-pythonpath", default=None)
    p.add_argument("--examples", type=int, default=600)
    p.add_argument("--timeout", type=int, default=420)
    p.add_argument("--append", action="store_true", help="add these rows to --out's results.json (one run, several "
                   "invocations: the GPU's call limit, or Unsloth's separate install)")
    p.add_argument("--cpu", action="store_true", help="tiny model on the CPU, 2 steps: checks this script")
    p.add_argument("--table", action="store_true", help="print the README table of --out's results.json and exit")
    args = p.parse_args(argv)
    if args.cpu:
        args.model, args.seq, args.batch, args.steps, args.warmup, args.examples = "tiny", 256, 2, 2, 1, 60
        args.runs, args.bare = "lora-fast-pack,lora-none-nopack", "lora"
    return args


# -- inputs -----------------------------------------------------------------------------------------------------


def write_model(args: argparse.Namespace, folder: Path) -> Path:
    """The seeded random model (bf16) with a ChatML tokenizer, written once."""
    if (folder / "config.json").is_file():
        return folder
    code = f"""
import sys, torch
sys.path[:0] = [{str(HERE)!r}, {str(ROOT)!r}]
from throughput_worker import model_config
from tests.tiny import tiny_tokenizer
from tunelab.core.templates import registry
from transformers import AutoModelForCausalLM
torch.manual_seed(0)
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
with device:
    model = AutoModelForCausalLM.from_config(model_config({args.model!r}, {args.layers!r}), dtype=torch.bfloat16)
model.save_pretrained({str(folder)!r}, max_shard_size="5GB")
tok = tiny_tokenizer(["<|im_start|>", "<|im_end|>"], vocab_size={480 if args.cpu else 4096}, chat_template=registry().get("chatml").source,
                     eos="<|im_end|>")
tok.save_pretrained({str(folder)!r})
"""
    subprocess.run([sys.executable, "-c", code], check=True)
    return folder


def write_dataset(args: argparse.Namespace, path: Path) -> Path:
    """Alpaca-format rows (the shipped format) with answers of 60-700 words drawn from the shipped data's words."""
    sys.path[:0] = [str(ROOT)]
    from tests.tiny import corpus

    words = sorted({w for text in corpus() for w in text.split() if w.isalpha()})
    rng = random.Random(0)
    scale = 0.1 if args.cpu else 1.0
    rows = [{"instruction": " ".join(rng.choices(words, k=rng.randint(8, 30))), "input": "",
             "output": " ".join(rng.choices(words, k=int(rng.randint(60, 700) * scale)))} for _ in range(args.examples)]
    path.write_text(json.dumps(rows))
    return path


# -- runs -------------------------------------------------------------------------------------------------------


def rate(events: list[dict], warmup: int) -> dict[str, Any]:
    """Real tokens per second over the steps after ``warmup``, from train events (tokens_seen, elapsed_s)."""
    after = [e for e in events if e["step"] >= warmup]
    first, last = after[0], after[-1]
    seconds = last["elapsed_s"] - first["elapsed_s"]
    tokens = last["tokens_seen"] - first["tokens_seen"]
    steps = last["step"] - first["step"]
    return {"tokens_per_s": round(tokens / seconds, 1) if seconds > 0 else None, "step_s": round(seconds / steps, 4),
            "tokens_per_step": round(tokens / steps), "measured_steps": steps}


def run_product(name: str, args: argparse.Namespace, model: Path, data: Path, out: Path) -> dict:
    """One `tunelab train` run; its speed and memory from the run directory's events."""
    method, booster, packing, extra = RUNS[name]
    cmd = [sys.executable, "-m", "tunelab.cli", "train", f"model={model}", f"dataset={data}", f"method={method}",
           f"booster={booster}", f"packing={str(packing).lower()}", f"cutoff_len={args.seq}",
           f"batch_size={args.batch}", f"max_steps={args.warmup + args.steps}", *COMMON, *extra,
           *(["precision=fp32"] if args.cpu else []), "--runs-dir", str(out / "runs")]
    return measured_run(cmd, args.timeout, args.warmup)


def measured_run(cmd: list[str], timeout: int, warmup: int) -> dict:
    """Run a `tunelab train` command line; its speed (after ``warmup`` steps) and memory from the run's events."""
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        return {"error": f"timeout after {timeout}s: {str(exc.stdout or '')[-800:]}"}
    wall = round(time.perf_counter() - t0, 1)
    line = next((l for l in proc.stdout.splitlines() if l.startswith("run directory: ")), None)
    failed = {"error": f"exit {proc.returncode}: {(proc.stdout + proc.stderr)[-1500:]}", "wall_s": wall}
    if line is None:
        return failed
    run_dir = Path(line.removeprefix("run directory: "))
    events = [json.loads(l) for l in (run_dir / "events.jsonl").read_text().splitlines()]
    train = [e for e in events if e["type"] == "train"]
    status = json.loads((run_dir / "status.json").read_text())
    steps = next((int(a.split("=", 1)[1]) for a in cmd if a.startswith("max_steps=")), None)
    if proc.returncode != 0 and not (train and train[-1]["step"] == steps):
        return {**failed, "run_dir": str(run_dir)}
    # a run that trained every step and failed after (its final save: a full 8B checkpoint outgrows the GPU
    # machine's disk) is still measured, and says so
    after = {"failed_after_training": str(status.get("error") or failed["error"])[-300:]} if proc.returncode else {}
    last = train[-1]
    return {**rate(train, warmup), **after, "peak_gib": last.get("peak_mem_gb"),
            "peak_reserved_gib": last.get("peak_reserved_gb"), "pinned_host_gib": last.get("pinned_host_gb"),
            "booster": status.get("booster"), "booster_reason": status.get("booster_reason"),
            "losses": [e["loss"] for e in train], "wall_s": wall, "run_dir": str(run_dir)}


def run_peer(name: str, args: argparse.Namespace, model: Path, data: Path) -> dict:
    """trl's or Unsloth's recipe on the same model and data, in its own process."""
    kind, method, packing = PEERS[name]
    job = {"kind": kind, "method": method, "packing": packing, "model": str(model), "data": str(data),
           "seq": args.seq, "batch": args.batch, "steps": args.steps, "warmup": args.warmup, "rank": 16,
           "alpha": 32, "cpu": args.cpu}
    env = dict(os.environ, **OFFLINE)
    if kind == "unsloth":
        if not args.unsloth_pythonpath:
            return {"error": "skipped: no --unsloth-pythonpath"}
        env["PYTHONPATH"] = f"{args.unsloth_pythonpath}:{env.get('PYTHONPATH', '')}"
    return _result_of([sys.executable, str(HERE / "recipe_peer.py"), json.dumps(job)], env, args.timeout)


def run_bare(method: str, args: argparse.Namespace) -> dict:
    """The bare loop (no trainer) of throughput_worker.py with the fast path, same shape, seq and batch."""
    job = {"mode": "throughput", "model": args.model, "method": method, "path": "fast", "name": "fast-offload",
           "fast": {"checkpointing": "offload"}, "steps": args.steps, "warmup": args.warmup, "seq": args.seq,
           "batch": args.batch, "layers": args.layers}
    return _result_of([sys.executable, str(HERE / "throughput_worker.py"), json.dumps(job)],
                      dict(os.environ, **OFFLINE, **SAME_ALLOCATOR), args.timeout)


def _result_of(cmd: list[str], env: dict, timeout: int) -> dict:
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        output = proc.stdout + proc.stderr
    except subprocess.TimeoutExpired:
        return {"error": "timeout"}
    line = next((l for l in reversed(output.splitlines()) if l.startswith("RESULT ")), None)
    if line is None:
        return {"error": output[-1500:]}
    return {**json.loads(line[len("RESULT "):]), "wall_s": round(time.perf_counter() - t0, 1)}


def environment() -> dict[str, Any]:
    """The GPU and library versions this invocation ran with."""
    code = ("import json, torch, transformers, peft; d = {'torch': torch.__version__, 'transformers': "
            "transformers.__version__, 'peft': peft.__version__}\n"
            "if torch.cuda.is_available(): d['gpu'] = torch.cuda.get_device_name()\n"
            "for m in ('trl', 'bitsandbytes'):\n"
            "    try: d[m] = __import__(m).__version__\n"
            "    except Exception: pass\n"
            "print(json.dumps(d))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return json.loads(proc.stdout) if proc.returncode == 0 else {"error": proc.stderr[-300:]}


# -- report -----------------------------------------------------------------------------------------------------


def table(rows: list[dict]) -> str:
    """The README table: one line per run; ratios to plain HF (trl's recipe), to Unsloth's recipe and, for the fast
    path, to the bare loop, each of the same method (lora / qlora)."""
    ok = {r["name"]: r for r in rows if r.get("tokens_per_s") and not r.get("invalid")}
    lines = ["| run | tok/s | GiB alloc / reserved | pinned host GiB | x plain HF (trl) | x Unsloth | x bare loop |",
             "|---|---:|---:|---:|---:|---:|---:|"]

    def ratio(r: dict, ref: dict | None) -> str:
        return f"{r['tokens_per_s'] / ref['tokens_per_s']:.2f}" if ref and ref is not r else ""

    for r in rows:
        if r.get("invalid"):  # measured, then found wrong: kept in the JSON with the reason, left out of the ratios
            lines.append(f"| {r['name']} | invalid: {r['invalid'][:90]} | | | | | |")
            continue
        if not r.get("tokens_per_s"):
            lines.append(f"| {r['name']} | failed: {str(r.get('error', ''))[-80:]!r} | | | | | |")
            continue
        method = r["name"].split("-")[1] if r["name"].split("-")[0] in ("trl", "unsloth", "bare") else r["name"].split("-")[0]
        mem = f"{r.get('peak_gib') or 0:.1f} / {r.get('peak_reserved_gib') or 0:.1f}"
        bare = ok.get(f"bare-{method}") if "fast" in r["name"] else None
        pinned = f"{r['pinned_host_gib']:.2f}" if r.get("pinned_host_gib") else ""
        lines.append(f"| {r['name']} | {r['tokens_per_s']:,.0f} | {mem} | {pinned} | "
                     f"{ratio(r, ok.get(f'trl-{method}-pack'))} | {ratio(r, ok.get(f'unsloth-{method}-pack'))} | "
                     f"{ratio(r, bare)} |")
    return "\n".join(lines)


def prepare_dirs(out: Path, default_work: str) -> Path:
    """Create ``out`` and the work folder ($TUNELAB_BENCH_DIR, else ``default_work``); runs get their TUNELAB_HOME
    there and this checkout on PYTHONPATH. Returns the work folder."""
    out.mkdir(parents=True, exist_ok=True)
    work = Path(os.environ.get("TUNELAB_BENCH_DIR", default_work))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TUNELAB_HOME", str(work / "home"))
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")])
    return work


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    if args.table:
        source = out if out.suffix == ".json" else out / "results.json"
        print(table(json.loads(source.read_text())["rows"]))
        return 0
    work = prepare_dirs(out, "/tmp/tunelab-product-bench")
    start = time.perf_counter()
    model = write_model(args, work / f"{args.model}-{args.layers or 'all'}")
    data = write_dataset(args, work / "alpaca_long.json")
    invocation = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "host": platform.node(),
                  "started": time.strftime("%Y-%m-%d %H:%M:%S"), "args": vars(args),
                  "prepare_s": round(time.perf_counter() - start, 1), "environment": environment()}
    previous = out / "results.json"
    results = json.loads(previous.read_text()) if args.append and previous.is_file() else {"invocations": [], "rows": []}
    results["invocations"].append(invocation)
    plan = [("bare", m) for m in args.bare.split(",") if m] + [("peer", n) for n in args.peers.split(",") if n] + \
           [("product", n) for n in args.runs.split(",") if n]
    for kind, name in plan:
        if kind == "bare":
            row = {"name": f"bare-{name}", "invocation": len(results["invocations"]), **run_bare(name, args)}
        elif kind == "peer":
            row = {"name": name, "invocation": len(results["invocations"]), **run_peer(name, args, model, data)}
        else:
            row = {"name": name, "invocation": len(results["invocations"]), **run_product(name, args, model, data, out)}
        results["rows"].append(row)
        print(f"[{time.perf_counter() - start:5.0f}s] {row['name']}: {row.get('tokens_per_s') or row.get('error', '')[:300]}",
              flush=True)
        results["table"] = table(results["rows"])
        tmp = out / "results.json.tmp"
        tmp.write_text(json.dumps(results, indent=1))
        tmp.replace(out / "results.json")
    print(results["table"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
