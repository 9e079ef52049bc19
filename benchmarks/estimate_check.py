"""Estimate vs measured: runs `tunelab train` (the product path) for a list of configs and writes both per row.

    python benchmarks/estimate_check.py --out benchmarks/results/estimate-check.json            (on a GPU)
    python benchmarks/estimate_check.py --out /tmp/ec.json --cpu-like                           (checks this script)
    python benchmarks/estimate_check.py --out benchmarks/results/estimate-check.json --table    (the README table)
    python benchmarks/estimate_check.py --out FILE --import-product benchmarks/results/h200-product.json

Each row trains a random-weight model of a real shape (benchmarks/throughput_worker.py's shapes, written with
benchmarks/product_bench.py's model and dataset writers: ChatML tokenizer, alpaca rows of 60-700 words) with cutoff
2048, batch 2, packing, LoRA r16 on all 7 projections, gradient checkpointing, for ``warmup + steps`` steps, and
records measured tokens/s (real tokens after the warm-up) and peak allocated/reserved GiB beside the estimate
tunelab.core.estimate gave before the run (``estimated_at_run``, the constants of that moment). Each row also keeps
the inputs of the estimate, so tests/core/test_estimate.py recomputes it with today's constants. The file is
rewritten after every row; ``--budget`` skips rows that would start too late for one device call.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT / "src")]

import product_bench as pb  # noqa: E402  (its model/data writers and its `tunelab train` runner)

from tunelab.core.calibration import row_errors, row_estimate, shape_fields  # noqa: E402

# name -> (shape, method, booster, packing[, other RunConfig fields]); run in this order (the most wanted first)
ROWS: dict[str, tuple[Any, ...]] = {
    "qwen7b-lora-fast": ("qwen7b", "lora", "fast", True),
    "qwen7b-qlora-fast": ("qwen7b", "qlora", "fast", True),
    "qwen7b-lora-none": ("qwen7b", "lora", "none", True),
    "qwen7b-qlora-none": ("qwen7b", "qlora", "none", True),
    "llama3b-full-none": ("llama3b", "full", "none", True),
    "llama8b-qlora-none": ("llama8b", "qlora", "none", True),
    "llama8b-lora-fast": ("llama8b", "lora", "fast", True),
    "llama8b-full-none": ("llama8b", "full", "none", True),
    "qwen7b-full-none": ("qwen7b", "full", "none", True),
    "llama8b-lora-none": ("llama8b", "lora", "none", True),
    "llama8b-qlora-fast": ("llama8b", "qlora", "fast", True),
    # full 8B with the default (foreach) AdamW needs the whole of an 80 GB card; the fused one fits there
    "llama8b-full-fused": ("llama8b", "full", "none", True, {"optimizer": "adamw_torch_fused"}),
}
DEFAULT_ROWS = list(ROWS)[:9]  # the last two were measured by product_bench.py already (--import-product)
PRODUCT_ROWS = {"lora-fast-pack": "llama8b-lora-fast", "lora-none-pack": "llama8b-lora-none",
                "qlora-fast-pack": "llama8b-qlora-fast", "lora-fast-nopack": "llama8b-lora-fast-nopack"}
H200_MEMORY_GIB = 140.4  # nvidia-smi memory.total of the H200 behind h200-product.json (143,771 MiB)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="the results JSON file")
    p.add_argument("--rows", default=",".join(DEFAULT_ROWS), help=f"comma-separated, of: {', '.join(ROWS)}")
    p.add_argument("--steps", type=int, default=4, help="measured steps after the warm-up")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--examples", type=int, default=160)
    p.add_argument("--timeout", type=int, default=240, help="seconds per row")
    p.add_argument("--budget", type=float, default=1e9, help="start no row after this many seconds")
    p.add_argument("--cpu-like", action="store_true", help="every row on the tiny shape on the CPU: times this script")
    p.add_argument("--merge", action="store_true", help="keep the rows already in --out (rerun ones are replaced)")
    p.add_argument("--table", action="store_true", help="print the table of --out and exit")
    p.add_argument("--leave-one-out", action="store_true",
                   help="refit the plain path's speed constant without each plain row of --out, predict that row, exit")
    p.add_argument("--import-product", help="add the rows of a product_bench.py results file to --out and exit")
    args = p.parse_args(argv)
    unknown = [n for n in args.rows.split(",") if n and n not in ROWS]
    if unknown:
        p.error(f"--rows: unknown {', '.join(unknown)}; valid: {', '.join(ROWS)}")
    return args


def bench_args(args: argparse.Namespace, shape: str) -> argparse.Namespace:
    """The namespace product_bench's writers and runner read."""
    cpu = args.cpu_like
    return argparse.Namespace(model="tiny" if cpu else shape, layers=None, cpu=cpu, seq=256 if cpu else 2048, batch=2,
                              steps=args.steps, warmup=args.warmup, examples=args.examples, timeout=args.timeout)


def device() -> tuple[str, float]:
    """(nvidia-smi name of the first visible GPU, its GiB), or ('CPU', host RAM GiB)."""
    from tunelab.services.gpus import detect_gpus

    gpus = detect_gpus()
    if gpus and gpus[0].memory_mib:
        return gpus[0].name, round(gpus[0].memory_mib / 1024, 1)
    from tunelab.core.gpus import host_memory_gib

    return "CPU", round(host_memory_gib(), 1)


def overrides(method: str, booster: str, packing: bool, seq: int, batch: int, cpu: bool) -> dict[str, Any]:
    """The RunConfig fields of a row (what product_bench passes on the command line)."""
    return {"method": method, "booster": booster, "packing": packing, "cutoff_len": seq, "batch_size": batch,
            "lora_rank": 16, "lora_target": "all", "gradient_checkpointing": True, **({"precision": "fp32"} if cpu else {})}


def data_size(run_dir: str) -> dict[str, Any]:
    """Examples and mean tokens per example (after the cutoff) from the run's data event."""
    events = [json.loads(line) for line in (Path(run_dir) / "events.jsonl").read_text().splitlines()]
    data = next(e for e in events if e["type"] == "data")
    return {"examples": data["kept"], "mean_length": round(data["tokens"] / max(data["kept"], 1), 1)}


def other_fields(spec: tuple[Any, ...]) -> dict[str, Any]:
    """The RunConfig fields a row sets beyond shape, method, booster and packing."""
    return spec[4] if len(spec) > 4 else {}


def make_row(name: str, spec: tuple[Any, ...], result: dict, model: Path, args: argparse.Namespace,
             gpu: tuple[str, float]) -> dict[str, Any]:
    """One results row: the estimate's inputs, what was measured, and the estimate made now."""
    shape, method, booster, packing = spec[:4]
    bench = bench_args(args, shape)
    row: dict[str, Any] = {
        "name": name, "source": "estimate_check.py", "date": time.strftime("%Y-%m-%d"), "device": gpu[0],
        "gpu_memory_gib": gpu[1], "model_config": shape_fields(json.loads((model / "config.json").read_text())),
        "overrides": {**overrides(method, booster, packing, bench.seq, bench.batch, args.cpu_like), **other_fields(spec)},
        "wall_s": result.get("wall_s"),
    }
    if not result.get("tokens_per_s"):
        return {**row, "error": str(result.get("error", "no tokens/s"))[-800:]}
    if result.get("failed_after_training"):
        row["failed_after_training"] = result["failed_after_training"]
    row["data"] = data_size(result["run_dir"])
    row["measured"] = {"tokens_per_s": result["tokens_per_s"], "step_s": result["step_s"],
                       "tokens_per_step": result["tokens_per_step"], "peak_allocated_gib": result["peak_gib"],
                       "peak_reserved_gib": result.get("peak_reserved_gib"), "pinned_host_gib": result.get("pinned_host_gib"),
                       "booster": result.get("booster")}
    est = row_estimate(row)
    row["estimated_at_run"] = {"tokens_per_s": round(est.tokens_per_s, 1), "allocated_gib": round(est.allocated_gib, 2),
                               "reserved_gib": round(est.reserved_gib, 2), "needed_gib": round(est.needed_gib, 2),
                               "path": est.path}
    return row


def import_product(source: Path) -> list[dict[str, Any]]:
    """The 8B rows of product_bench.py's H200 run as calibration rows (same config, the data it trained on)."""
    results = json.loads(source.read_text())
    config = shape_fields(pb_config("llama8b"))
    rows = []
    for r in results["rows"]:
        if r["name"] not in PRODUCT_ROWS or not r.get("tokens_per_s"):
            continue
        method, booster, packing, _ = pb.RUNS[r["name"]]
        mean = r["tokens_per_step"] / 2 if not packing else 409.0  # the unpacked row's mean = the data's mean
        rows.append({
            "name": PRODUCT_ROWS[r["name"]], "source": f"{source.name} ({results['started'][:10]})",
            "date": results["started"][:10], "device": "NVIDIA H200", "gpu_memory_gib": H200_MEMORY_GIB,
            "model_config": config, "overrides": overrides(method, booster, packing, 2048, 2, False),
            "data": {"examples": results["args"]["examples"], "mean_length": mean},
            "measured": {"tokens_per_s": r["tokens_per_s"], "step_s": r["step_s"], "tokens_per_step": r["tokens_per_step"],
                         "peak_allocated_gib": r["peak_gib"], "peak_reserved_gib": r["peak_reserved_gib"],
                         "pinned_host_gib": r.get("pinned_host_gib"), "booster": r.get("booster")},
        })
    return rows


def pb_config(shape: str) -> dict[str, Any]:
    """config.json fields of a throughput_worker shape (without building the model)."""
    from throughput_worker import model_config

    return model_config(shape).to_dict()


def table(rows: list[dict[str, Any]]) -> str:
    """estimate vs measured, one line per row, with the relative errors."""
    lines = ["| row | GPU | reserved GiB est / meas | err | allocated GiB est / meas | err | tok/s est / meas | err |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        if not row.get("measured"):
            lines.append(f"| {row['name']} | {row.get('device', '')} | failed: {str(row.get('error', ''))[:60]!r} | | | | | |")
            continue
        est, meas, err = row_estimate(row), row["measured"], row_errors(row)

        def cell(e: float, key: str, fmt: str) -> str:
            m = meas.get(key)
            return f"{e:{fmt}} / {m:{fmt}} | {err[key]:+.0%}" if m else f"{e:{fmt}} / - | "

        lines.append(f"| {row['name']} | {row['device'].replace('NVIDIA ', '')} | {cell(est.reserved_gib, 'peak_reserved_gib', '.1f')} | "
                     f"{cell(est.allocated_gib, 'peak_allocated_gib', '.1f')} | {cell(est.tokens_per_s, 'tokens_per_s', ',.0f')} |")
    return "\n".join(lines)


def leave_one_out(rows: list[dict[str, Any]]) -> str:
    """The plain path's speed constant (CAL plain_bytes) refitted on all plain rows but one, by the smallest worst
    error as it was fitted, and that held-out row predicted: speed error out of sample."""
    from tunelab.core import estimate_model

    plain = [r for r in rows if r.get("measured") and r["overrides"].get("booster") == "none"]
    fitted = estimate_model.CAL["plain_bytes"]

    def error(row: dict[str, Any], value: float) -> float:
        estimate_model.CAL["plain_bytes"] = value
        return row_errors(row)["tokens_per_s"]

    lines = ["| held-out row | refitted plain_bytes | worst error of the others | held-out error | with every row |",
             "|---|---:|---:|---:|---:|"]
    try:
        for held in plain:
            others = [r for r in plain if r is not held]
            best = min((v * 10.0 for v in range(20, 400)), key=lambda v: max(abs(error(r, v)) for r in others))
            worst = max(abs(error(r, best)) for r in others)
            lines.append(f"| {held['name']} | {best:.0f} | {worst:.0%} | {error(held, best):+.0%} | {error(held, fitted):+.0%} |")
    finally:
        estimate_model.CAL["plain_bytes"] = fitted
    return "\n".join(lines)


def write_models(args: argparse.Namespace, names: list[str], work: Path) -> dict[str, Path]:
    """Every model the rows need, written at once (one process each: the writes overlap)."""
    from concurrent.futures import ThreadPoolExecutor

    folders = {ROWS[n][0]: work / f"{bench_args(args, ROWS[n][0]).model}-all" for n in names}
    unique = {folder: shape for shape, folder in folders.items()}
    with ThreadPoolExecutor(max(1, len(unique))) as pool:
        for future in [pool.submit(pb.write_model, bench_args(args, shape), folder) for folder, shape in unique.items()]:
            future.result()
    return folders


def drop_weights(run_dir: str | None) -> None:
    """Delete a measured run's saved weights (a full 8B model is 16 GB: two would fill the GPU machine's disk)."""
    if run_dir:
        for part in ("model", "adapter", "checkpoints"):
            shutil.rmtree(Path(run_dir) / part, ignore_errors=True)


def save(path: Path, results: dict[str, Any]) -> None:
    """Write the results file atomically."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=1))
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    old = json.loads(out.read_text()) if out.is_file() and (args.merge or args.table or args.import_product
                                                             or args.leave_one_out) else {}
    if args.table:
        print(table(old["rows"]))
        return 0
    if args.leave_one_out:
        print(leave_one_out(old["rows"]))
        return 0
    if args.import_product:
        imported = import_product(Path(args.import_product))
        names = {r["name"] for r in imported}
        old = {**old, "rows": [r for r in old.get("rows", []) if r["name"] not in names] + imported}
        save(out, old)
        print(table(old["rows"]))
        return 0
    work = Path(os.environ.get("TUNELAB_BENCH_DIR", "/tmp/tunelab-product-bench"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TUNELAB_HOME", str(work / "home"))
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")])
    start, gpu = time.perf_counter(), device()
    runs = Path(os.environ.get("TUNELAB_CHECK_RUNS", str(work)))  # run_product writes run directories under runs/runs
    data = pb.write_dataset(bench_args(args, "tiny"), work / f"alpaca_{args.examples}.json")
    results = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
               "device": gpu[0], "args": vars(args), "rows": [r for r in old.get("rows", [])], "skipped": []}
    names = [n for n in args.rows.split(",") if n]
    import importlib.util

    extra = [] if importlib.util.find_spec("tensorboard") else ["report_to=none"]  # GPU images may lack it
    results["extra_overrides"] = extra
    models = write_models(args, names, work)
    print(f"[{time.perf_counter() - start:5.0f}s] models written: {', '.join(sorted(models))}", flush=True)
    for name in names:
        spec = ROWS[name]
        if time.perf_counter() - start > args.budget:
            results["skipped"].append(name)
            continue
        bench, model = bench_args(args, spec[0]), models[spec[0]]
        pb.RUNS[name] = (spec[1], spec[2], spec[3], extra + [f"{k}={v}" for k, v in other_fields(spec).items()])
        result = pb.run_product(name, bench, model, data, runs)
        row = make_row(name, spec, result, model, args, gpu)
        drop_weights(result.get("run_dir"))
        results["rows"] = [r for r in results["rows"] if r["name"] != name] + [row]
        save(out, results)
        got = row.get("measured", {})
        print(f"[{time.perf_counter() - start:5.0f}s] {name}: {got.get('tokens_per_s')} tok/s, "
              f"{got.get('peak_reserved_gib')} GiB reserved (estimated {row.get('estimated_at_run')}) {row.get('error', '')[:300]}",
              flush=True)
    save(out, results)
    print(table(results["rows"]))
    if results["skipped"]:
        print(f"skipped (budget): {', '.join(results['skipped'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
