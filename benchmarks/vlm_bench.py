"""A Qwen2.5-VL-7B-shaped (random weights) LoRA run through `tunelab train` on images: tokens/s and peak memory.

    python benchmarks/vlm_bench.py --out OUT [--tokenizer DIR]      (on a GPU: the 7B shape)
    python benchmarks/vlm_bench.py --out /tmp/vb --cpu --model DIR    (on the CPU, e.g. the demo VLM: checks this script)

Writes the model with benchmarks/make_random_qwen25vl.py, a dataset of generated 448x448 pictures (256 image tokens
each after Qwen's 2x2 merge) with long answers, then runs `tunelab train` once per booster, each in its own process:
``auto`` (the fast path does not cover Qwen2.5-VL: the run says why and trains on plain transformers) and ``liger``
(liger-kernel's Qwen2.5-VL patches). tokens/s counts real (non-pad) tokens, image tokens included, over the steps
after the warm-up; memory is the peak reserved GiB. results.json is rewritten after each run.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE)]
from product_bench import measured_run, prepare_dirs  # noqa: E402  (a sibling script)

COMMON = ["stage=sft", "method=lora", "lora_rank=16", "lora_target=all", "gradient_checkpointing=true",
          "logging_steps=1", "save_steps=100000", "learning_rate=2e-4", "warmup_ratio=0"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--tokenizer", default=None, help="a tokenizer folder for make_random_qwen25vl.py (default: demo)")
    p.add_argument("--model", default=None, help="an existing VLM folder instead of the random Qwen2.5-VL-7B")
    p.add_argument("--boosters", default="auto,liger")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--steps", type=int, default=8, help="measured steps after the warm-up")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--size", type=int, default=448, help="picture side in pixels")
    p.add_argument("--timeout", type=int, default=240)
    p.add_argument("--cpu", action="store_true", help="small pictures, 2 steps, fp32: checks this script")
    args = p.parse_args(argv)
    if args.cpu:
        args.batch, args.seq, args.steps, args.warmup, args.size, args.boosters = 2, 256, 2, 1, 56, "auto"
    return args


def write_dataset(args: argparse.Namespace, folder: Path) -> Path:
    """Rows of one generated picture (coloured shapes) + a question, answered with 150-350 words of the shipped data."""
    from PIL import Image, ImageDraw

    sys.path[:0] = [str(ROOT)]
    from tests.tiny import corpus

    words = sorted({w for text in corpus() for w in text.split() if w.isalpha()})
    rng = random.Random(0)
    (folder / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for n in range(args.batch * (args.warmup + args.steps) + args.batch):
        picture = Image.new("RGB", (args.size, args.size), "white")
        draw = ImageDraw.Draw(picture)
        for _ in range(rng.randint(1, 5)):
            x, y, r = rng.randint(0, args.size), rng.randint(0, args.size), rng.randint(args.size // 16, args.size // 4)
            draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(rng.randint(0, 255) for _ in range(3)))
        picture.save(folder / "img" / f"{n}.png")
        answer = " ".join(rng.choices(words, k=rng.randint(150, 350) // (8 if args.cpu else 1)))
        rows.append({"messages": [{"role": "user", "content": "<image>Describe this picture in detail."},
                                  {"role": "assistant", "content": answer}], "images": [f"img/{n}.png"]})
    path = folder / "pictures.json"
    path.write_text(json.dumps(rows))
    return path


def run_train(booster: str, args: argparse.Namespace, model: Path, data: Path, out: Path) -> dict[str, Any]:
    """One `tunelab train` run; its speed and memory from the run directory's events."""
    cmd = [sys.executable, "-m", "tunelab.cli", "train", f"model={model}", f"dataset={data}", f"booster={booster}",
           f"cutoff_len={args.seq}", f"batch_size={args.batch}", f"max_steps={args.warmup + args.steps}", *COMMON,
           *(["precision=fp32"] if args.cpu else []), "--runs-dir", str(out / "runs")]
    return measured_run(cmd, args.timeout, args.warmup)


def _version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    work = prepare_dirs(out, "/tmp/tunelab-vlm-bench")
    start = time.perf_counter()
    model = Path(args.model) if args.model else work / "qwen25vl-7b"
    if not (model / "config.json").is_file():
        make = [sys.executable, str(HERE / "make_random_qwen25vl.py"), str(model),
                *(["--tokenizer", args.tokenizer] if args.tokenizer else [])]
        subprocess.run(make, check=True)
    versions = {name: _version(name) for name in ("torch", "torchvision", "transformers", "peft", "trl", "liger-kernel")}
    results: dict[str, Any] = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "args": vars(args),
                               "started": time.strftime("%Y-%m-%d %H:%M:%S"), "versions": versions, "rows": []}
    data = write_dataset(args, work / "data")
    results["prepare_s"] = round(time.perf_counter() - start, 1)
    for booster in args.boosters.split(","):
        row = {"name": f"lora-{booster}", **run_train(booster, args, model, data, out)}
        results["rows"].append(row)
        print(f"[{time.perf_counter() - start:5.0f}s] {row['name']}: {row.get('tokens_per_s') or row.get('error', '')[:400]}",
              flush=True)
        tmp = out / "results.json.tmp"
        tmp.write_text(json.dumps(results, indent=1))
        tmp.replace(out / "results.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
