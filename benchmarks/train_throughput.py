"""Training throughput and memory on one GPU: plain transformers+PEFT, +Liger, tunelab's fast path (and Unsloth).

    python benchmarks/train_throughput.py --out benchmarks/results/h200

measures, for a Llama-3.1-8B-shaped and a Qwen2.5-7B-shaped model built from config (random weights, no hub),
LoRA r16 on all 7 projections in bf16 and QLoRA nf4, seq 2048 x batch 2, AdamW, activation checkpointing: tokens/s,
peak GiB and the ratio to plain HF of each path; then the longest 8B QLoRA sequence each path trains within a
24 GiB cap, the fast path's correctness against plain HF, and a kernel profile of its step. Each measurement runs
in its own process with a timeout; results.json is rewritten after each one. ``--smoke`` runs the same jobs on
2-layer models in a minute; ``--device-cpu`` (no GPU) exercises the script itself on a tiny model.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
WORKER = HERE / "throughput_worker.py"

# name -> (path, options for the fast path)
PATHS: dict[str, tuple[str, dict]] = {
    "plain": ("plain", {}),
    "liger": ("liger", {}),
    "unsloth": ("unsloth", {}),
    "fast-offload": ("fast", {"checkpointing": "offload"}),
    "fast-full": ("fast", {"checkpointing": "full"}),
    "fast-mlp": ("fast", {"checkpointing": "mlp"}),
    "fast-none": ("fast", {"checkpointing": "none"}),
    "fast-offload-torch": ("fast", {"checkpointing": "offload", "kernels": False}),
    "fast-offload-noce": ("fast", {"checkpointing": "offload", "fused_ce": False}),
}
DEFAULT_PATHS = {"lora": "plain,liger,fast-offload,fast-mlp,fast-none", "qlora": "plain,liger,fast-offload,fast-none"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="folder for results.json and jobs.log (every job's output)")
    p.add_argument("--models", default="llama8b,qwen7b")
    p.add_argument("--methods", default="lora,qlora")
    p.add_argument("--lora-paths", default=DEFAULT_PATHS["lora"])
    p.add_argument("--qlora-paths", default=DEFAULT_PATHS["qlora"])
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--layers", type=int, default=None, help="fewer layers than the real shape (smoke tests)")
    p.add_argument("--no-throughput", action="store_true")
    p.add_argument("--context", default="plain,liger,fast-offload",
                   help="paths for the 8B QLoRA context search ('' = skip)")
    p.add_argument("--context-cap-gib", type=float, default=24.0)
    p.add_argument("--context-starts", default="plain=2048,liger=2048,fast=32768",
                   help="first probe per path (the second is twice it)")
    p.add_argument("--context-max", type=int, default=163840, help="longest sequence the context search tries")
    p.add_argument("--correctness", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--profile", default="fast-offload", help="paths to profile on the first model ('' = skip)")
    p.add_argument("--unsloth-pythonpath", default=None, help="PYTHONPATH of an environment with Unsloth")
    p.add_argument("--unsloth-models", default="llama8b", help="models Unsloth runs on (it loads them from disk)")
    p.add_argument("--smoke", action="store_true", help="2-layer models, 2 steps: checks every path quickly")
    p.add_argument("--device-cpu", action="store_true", help="tiny model on the CPU: checks this script")
    p.add_argument("--timeout", type=int, default=300, help="seconds per job")
    p.add_argument("--budget", type=int, default=3600, help="skip jobs that would start after this many seconds")
    p.add_argument("--merge", default=None, help="results.json of an earlier run whose jobs are kept (not re-run)")
    args = p.parse_args(argv)
    if args.smoke:
        args.layers, args.steps, args.warmup = args.layers or 2, 2, 1
    if args.device_cpu:
        args.models, args.layers, args.seq, args.steps, args.warmup = "tiny", None, 64, 3, 1
        args.lora_paths, args.qlora_paths, args.context, args.profile = "plain,fast-offload", "plain,fast-offload", "", ""
    return args


def plan_jobs(args: argparse.Namespace) -> list[dict]:
    """Every measurement of the run, in order."""
    jobs: list[dict] = []
    base = {"seq": args.seq, "batch": args.batch, "layers": args.layers}
    first = args.models.split(",")[0]
    if args.correctness:
        jobs.append({"mode": "correctness", "model": first, "method": "lora", "path": "fast",
                     "fast": {"checkpointing": "offload"}, "seq": 128 if args.device_cpu else 1024, "batch": 2,
                     "steps": 10 if args.device_cpu else 50, "lr": 1e-3,
                     "layers": 2 if args.device_cpu else 4, "timeout": args.timeout})
    for name in [n for n in args.context.split(",") if n]:
        path, fast = PATHS[name]
        # both fitting probes above the fast path's 16k-token switch to recomputing the MLP (a steeper slope below)
        start = dict(kv.split("=") for kv in args.context_starts.split(",")).get(path, 4096)
        start = int(start)
        jobs.append({"mode": "context", "model": "llama8b", "method": "qlora", "path": path, "name": name,
                     "fast": fast, "cap_gib": args.context_cap_gib, "start": start, "max_seq": args.context_max,
                     "layers": args.layers, "seq": 0, "batch": 1, "timeout": max(args.timeout, 240)})
    for model in args.models.split(",") if not args.no_throughput else []:
        wants_unsloth = "unsloth" in f"{args.lora_paths},{args.qlora_paths}" and args.unsloth_pythonpath
        wants_unsloth = wants_unsloth and model in args.unsloth_models.split(",")
        if wants_unsloth:
            jobs.append({"mode": "save_model", "model": model, "method": "-", "path": "save", "layers": args.layers,
                         "timeout": args.timeout})
        for method in args.methods.split(","):
            names = (args.lora_paths if method == "lora" else args.qlora_paths).split(",")
            for name in [n for n in names if n]:
                if name == "unsloth" and not wants_unsloth:
                    continue
                path, fast = PATHS[name]
                jobs.append({"mode": "throughput", "model": model, "method": method, "path": path, "name": name,
                             "fast": fast, "steps": args.steps, "warmup": args.warmup, **base,
                             "timeout": args.timeout})
        if model == first:
            jobs += profile_jobs(args, model, base)
    return jobs


def profile_jobs(args: argparse.Namespace, model: str, base: dict) -> list[dict]:
    """Kernel-time profiles of the named paths, one per method."""
    jobs = []
    for name in [n for n in args.profile.split(",") if n]:
        path, fast = PATHS[name]
        for method in args.methods.split(","):
            jobs.append({"mode": "profile", "model": model, "method": method, "path": path, "name": name,
                         "fast": fast, "steps": 2, "warmup": 1, **base, "timeout": args.timeout})
    return jobs


def job_key(job: dict) -> str:
    return "|".join(str(job.get(k)) for k in ("mode", "model", "method", "name", "seq", "batch", "layers"))


def run_job(job: dict, args: argparse.Namespace, log: Path) -> dict:
    """Run one job in a fresh process; returns the job with its result or error."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if job["path"] == "unsloth":
        env["PYTHONPATH"] = f"{args.unsloth_pythonpath}:{env.get('PYTHONPATH', '')}"
    if job["mode"] == "context":
        env["PYTORCH_CUDA_ALLOC_CONF"] = "expandable_segments:True"
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, str(WORKER), json.dumps(job)], env=env, capture_output=True, text=True,
                              timeout=job["timeout"])
        output, code = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        parts = [x.decode(errors="replace") if isinstance(x, bytes) else (x or "") for x in (exc.stdout, exc.stderr)]
        output, code = "".join(parts) + "\nTIMEOUT", "timeout"
    with open(log, "a") as fh:
        fh.write(f"\n===== {json.dumps(job)}\n{output}")
    line = next((l for l in reversed(output.splitlines()) if l.startswith("RESULT ")), None)
    done = {**job, "wall_s": round(time.perf_counter() - t0, 1)}
    if line:
        done["result"] = json.loads(line[len("RESULT "):])
    else:
        tail = [l for l in output.splitlines() if l.strip()][-6:]
        done["error"] = f"exit {code}: " + " | ".join(tail)[-800:]
    return done


def environment() -> dict[str, Any]:
    """Versions and the device, read in a child process so this one stays light."""
    code = ("import json, torch, transformers, peft, importlib.metadata as m\n"
            "def v(n):\n try: return m.version(n)\n except Exception: return None\n"
            "print(json.dumps({'torch': torch.__version__, 'transformers': transformers.__version__, 'peft': peft.__version__,"
            "'triton': v('triton'), 'liger_kernel': v('liger-kernel'), 'bitsandbytes': v('bitsandbytes'), 'unsloth': v('unsloth'),"
            "'device': torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    try:
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return {"error": out.stderr[-300:]}


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


def summarize(jobs: list[dict]) -> list[dict]:
    """One row per throughput job with its ratio to plain HF of the same model and method."""
    rows = []
    plain = {(j["model"], j["method"]): j["result"]["tokens_per_s"] for j in jobs
             if j["mode"] == "throughput" and j.get("name") == "plain" and "result" in j}
    for j in jobs:
        if j["mode"] != "throughput":
            continue
        row = {"model": j["model"], "method": j["method"], "path": j["name"]}
        if "result" in j:
            r = j["result"]
            base = plain.get((j["model"], j["method"]))
            row.update(tokens_per_s=r["tokens_per_s"], peak_gib=r.get("peak_gib"),
                       ratio=round(r["tokens_per_s"] / base, 2) if base else None)
        else:
            row["error"] = j.get("error", "")[:120]
        rows.append(row)
    return rows


def table(rows: list[dict], jobs: list[dict]) -> str:
    lines = ["| model | method | path | tokens/s | peak GiB | x plain HF |", "|---|---|---|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['method']} | {r['path']} | failed: {r['error'][:60]} | | |")
        else:
            lines.append(f"| {r['model']} | {r['method']} | {r['path']} | {r['tokens_per_s']:,.0f} | {r['peak_gib']} | "
                         f"{r['ratio']} |")
    for j in jobs:
        if j["mode"] == "context":
            r = j.get("result", {})
            lines.append(f"context {j['model']} {j['method']} {j['name']} within {j['cap_gib']} GiB: "
                         f"{r.get('max_seq', 'failed')} (predicted {r.get('predicted_seq')})" + (" [search cap]" if r.get("capped") else ""))
        if j["mode"] == "correctness" and "result" in j:
            r = j["result"]
            lines.append(f"correctness: loss max rel diff {r['loss_max_rel_diff']:.4f} over {len(r['loss_fast'])} steps "
                         f"(plain loss {r['loss_plain'][0]:.3f} -> {r['loss_plain'][-1]:.3f}); grad rel err "
                         + ", ".join(f"{k} {v['max']:.4f}" for k, v in r["grad_rel_err"].items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    logs = out / "jobs.log"
    kept = {}
    if args.merge:
        kept = {job_key(j): j for j in json.loads(Path(args.merge).read_text())["jobs"] if "result" in j}
    data = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "host": platform.node(), "env": environment(), "args": vars(args), "jobs": []}
    start = time.perf_counter()
    for job in plan_jobs(args):
        if job_key(job) in kept:
            data["jobs"].append(kept[job_key(job)])
            continue
        if time.perf_counter() - start > args.budget:
            data["jobs"].append({**job, "error": "skipped: time budget"})
            continue
        done = run_job(job, args, logs)
        data["jobs"].append(done)
        brief = done.get("result", {}).get("tokens_per_s") or done.get("error", "ok")[:200]
        print(f"[{time.perf_counter() - start:6.0f}s] {job['mode']} {job['model']} {job['method']} "
              f"{job.get('name', job['path'])}: {brief}", flush=True)
        data["summary"] = summarize(data["jobs"])
        write_json(out / "results.json", data)
    data["summary"] = summarize(data["jobs"])
    data["elapsed_s"] = round(time.perf_counter() - start, 1)
    write_json(out / "results.json", data)
    print(table(data["summary"], data["jobs"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
