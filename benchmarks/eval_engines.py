"""predict on the hf engine vs the vLLM engine, same run, same examples, same greedy settings, outputs compared.

    python benchmarks/eval_engines.py RUN_DIR [--examples 64] [--max-new-tokens 64] [--out result.json]

Each engine runs as a real `tunelab eval` job (metrics=predict, base and fine-tuned side, bootstrap off); the hf
engine at its default batch size and with every prompt in one batch. vLLM comes from this Python or
$TUNELAB_VLLM_PYTHON. Printed and written: job wall time, generation time per side (vLLM's start separate),
the speed-up ratios, and how many replies are identical to the hf engine's.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from datetime import date
from pathlib import Path


def run_eval(run: str, engine: str, examples: int, max_new_tokens: int, batch_size: int, runs_dir: Path) -> dict:
    """One `tunelab eval` job; its wall time, timings and predictions."""
    argv = [sys.executable, "-m", "tunelab.cli", "eval", "--run", run, "--metrics", "predict", "--dataset", "identity",
            "--max-samples", str(examples), "--runs-dir", str(runs_dir), f"engine={engine}",
            f"max_new_tokens={max_new_tokens}", f"batch_size={batch_size}", "bootstrap=0"]
    started = time.monotonic()
    result = subprocess.run(argv, capture_output=True, text=True)
    wall = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"{engine} eval failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    job = Path(next(line for line in result.stdout.splitlines() if line.startswith("eval job: ")).split(": ", 1)[1])
    results = json.loads((job / "results.json").read_text())
    predictions = [json.loads(line) for line in (job / "predictions.jsonl").read_text().splitlines()]
    return {"engine": engine, "batch_size": batch_size, "wall_s": round(wall, 1), "timings": results["timings"],
            "predictions": predictions, "job": str(job)}


def main() -> int:
    """Run both engines and print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    runs_dir = Path(args.run).resolve().parent
    rows = [run_eval(args.run, "hf", args.examples, args.max_new_tokens, 4, runs_dir),
            run_eval(args.run, "hf", args.examples, args.max_new_tokens, args.examples, runs_dir),
            run_eval(args.run, "vllm", args.examples, args.max_new_tokens, 4, runs_dir)]
    reference = rows[0]["predictions"]
    report = {"date": str(date.today()), "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
              "examples": len(reference), "max_new_tokens": args.max_new_tokens, "runs": []}
    for row in rows:
        t = row["timings"]
        generate = t["predict_base_s"] + t["predict_tuned_s"]
        same = sum(p[s] == r[s] for p, r in zip(row["predictions"], reference) for s in ("base", "tuned"))
        report["runs"].append({"engine": row["engine"], "batch_size": row["batch_size"], "job_wall_s": row["wall_s"],
                               "generate_s": round(generate, 2), "vllm_start_s": t.get("vllm_start_s"),
                               "identical_replies": f"{same}/{2 * len(reference)}"})
    base = report["runs"][0]
    for run in report["runs"]:
        run["generate_speedup_vs_hf_bs4"] = round(base["generate_s"] / run["generate_s"], 2)
        run["wall_speedup_vs_hf_bs4"] = round(base["job_wall_s"] / run["job_wall_s"], 2)
    print(json.dumps(report, indent=1))
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
