"""Preprocessing throughput and memory: tunelab's streaming path beside the straightforward one, in the same run.

    python benchmarks/preprocess.py --out benchmarks/results/cpu-preprocess.json          (50k rows, ~3 min on 2 idle cores)
    python benchmarks/preprocess.py --rows 3000 --rss-rows 500 1000 --out /tmp/pp.json      (checks this script)
    python benchmarks/preprocess.py --other 0.3 --rss-rows --out benchmarks/results/cpu-preprocess-mixed.json

Writes ``--rows`` synthetic multi-turn conversations (seeded: a Zipf-distributed made-up lexicon, 1-4 turns, a
system prompt in a third of them; ``--other``: that share of sentences gets one word with characters outside
ASCII) as JSONL, trains a 32k-vocabulary byte-level BPE on part of them (tokenizers)
and wraps it with ChatML (the registry template, whose {% generation %} tags mark the replies). Then, from the
same file to a tokenized Arrow dataset on disk:
- baseline: what trl 1.16's SFTTrainer does by default with assistant_only_loss (one process): ``load_dataset("json")``,
  then ``Dataset.map`` of apply_chat_template(tokenize=True, return_assistant_tokens_mask=True) per example, a map
  building labels from the mask, a map truncating to max_length, a filter dropping rows left without loss;
- tunelab: ``engine.data.prepare_data`` (validation pass, streaming encode in worker processes, Arrow shards, cache),
  with one worker and with one per core; then again from its cache.
The script asserts identical input_ids and labels, row for row, and fails when tunelab is not >= 3x the baseline.
Peak RSS is measured in a fresh process per size (``--rss-rows``), for the streaming path and for the in-memory
path tunelab used before (examples and rows held as Python lists, then ``Dataset.from_list``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CUTOFF = 1024
SPECIALS = ["<s>", "</s>", "<pad>", "<unk>", "<|im_start|>", "<|im_end|>"]


OTHER_WORDS = ["café", "naïve", "日本語", "Привет", "straße", "🚀", "über", "niño", "中文", "crème", "“quoted”", "don’t"]


def write_conversations(path: Path, rows: int, seed: int = 0, other: float = 0.0) -> None:
    """``rows`` seeded multi-turn conversations as OpenAI-format JSONL; ``other``: the share of sentences given one
    word from OTHER_WORDS (characters outside ASCII) at a random place."""
    rng, mixer = random.Random(seed), random.Random(seed + 1)
    syllables = ["ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "ze", "po", "qu", "ha", "el", "an", "or", "ist",
                 "ung", "ber", "cal", "dor", "th", "st", "ing", "ed", "ph", "ly", "ment", "ous", "tr", "gr", "bl", "ex"]
    lexicon = list(dict.fromkeys("".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(150_000)))
    weights = list(itertools.accumulate(1 / (rank + 10) for rank in range(len(lexicon))))

    def sentence(words: int) -> str:
        chosen = rng.choices(lexicon, cum_weights=weights, k=words)
        if mixer.random() < other:
            chosen.insert(mixer.randrange(len(chosen) + 1), mixer.choice(OTHER_WORDS))
        text = " ".join(chosen)
        return text[0].upper() + text[1:] + rng.choice([".", "?", "!", "."])

    with path.open("w", encoding="utf-8") as handle:
        for index in range(rows):
            messages = [{"role": "system", "content": sentence(rng.randint(5, 20))}] if index % 3 == 0 else []
            for _ in range(rng.randint(1, 4)):
                messages.append({"role": "user", "content": sentence(rng.randint(10, 60))})
                messages.append({"role": "assistant", "content": sentence(rng.randint(20, 120))})
            handle.write(json.dumps({"messages": messages}) + "\n")


def train_tokenizer(data: Path, folder: Path, sample: int = 10_000) -> None:
    """A 32k byte-level BPE trained on the first ``sample`` conversations, saved with the ChatML template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from tunelab.core.templates import registry

    def texts():
        with data.open(encoding="utf-8") as handle:
            for line in itertools.islice(handle, sample):
                yield from (m["content"] for m in json.loads(line)["messages"])

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=32_000, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(texts(), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="<|im_end|>", pad_token="<pad>",
                                        unk_token="<unk>", chat_template=registry().get("chatml").source)
    tokenizer.save_pretrained(folder)


def load_tokenizer(folder: Path) -> Any:
    """The benchmark's tokenizer and its template choice."""
    from transformers import PreTrainedTokenizerFast

    from tunelab.core.template_choice import TemplateChoice
    from tunelab.core.templates import registry

    return PreTrainedTokenizerFast.from_pretrained(folder), TemplateChoice(registry().get("chatml"), "benchmark")


def baseline(data: Path, tokenizer: Any, cache: Path) -> Any:
    """trl 1.16 SFTTrainer._prepare_dataset for conversational rows with assistant_only_loss=True (no packing)."""
    import datasets

    def tokenize(example: dict) -> dict:
        out = tokenizer.apply_chat_template(example["messages"], tokenize=True, return_dict=True,
                                            return_assistant_tokens_mask=True)
        return {"input_ids": out["input_ids"], "assistant_masks": out["assistant_masks"]}

    def build_labels(example: dict) -> dict:
        return {"labels": [t if m else -100 for t, m in zip(example["input_ids"], example["assistant_masks"])]}

    def truncate(example: dict) -> dict:
        return {"input_ids": example["input_ids"][:CUTOFF], "labels": example["labels"][:CUTOFF]}

    dataset = datasets.load_dataset("json", data_files=str(data), split="train", cache_dir=str(cache))
    dataset = dataset.map(tokenize, remove_columns=["messages"], load_from_cache_file=False)
    dataset = dataset.map(build_labels, remove_columns=["assistant_masks"], load_from_cache_file=False)
    dataset = dataset.map(truncate, load_from_cache_file=False)
    return dataset.filter(lambda example: any(label != -100 for label in example["labels"]), load_from_cache_file=False)


def tunelab(data: Path, tokenizer: Any, choice: Any, home: Path, workers: int) -> Any:
    """tunelab's prepare_data on the file (TUNELAB_HOME=``home``: a cold cache unless it ran there before)."""
    from tunelab.core.config import RunConfig
    from tunelab.engine.data import prepare_data

    os.environ["TUNELAB_HOME"] = str(home)
    config = RunConfig(dataset=[str(data)], template="chatml", cutoff_len=CUTOFF, preprocessing_num_workers=workers)
    return prepare_data(config, tokenizer, choice)


def identical(ours: Any, theirs: Any) -> bool:
    """Row for row the same input_ids and labels (compared in batches: nothing held whole)."""
    if len(ours) != len(theirs):
        return False
    columns = ["input_ids", "labels"]
    for mine, base in zip(ours.select_columns(columns).iter(1000), theirs.select_columns(columns).iter(1000)):
        if mine != base:
            return False
    return True


def timed(function: Any, *args: Any) -> tuple[Any, float, float]:
    """(result, wall seconds, CPU seconds of this process and of the children it reaped meanwhile)."""
    start, cpu = time.perf_counter(), os.times()
    result = function(*args)
    end = os.times()
    used = sum(getattr(end, k) - getattr(cpu, k) for k in ("user", "system", "children_user", "children_system"))
    return result, time.perf_counter() - start, used


def rss_child(data: Path, tokenizer_dir: Path, home: Path, path: str) -> None:
    """One preparation in this fresh process; prints its peak RSS (and its workers') as JSON."""
    tokenizer, choice = load_tokenizer(tokenizer_dir)
    start = time.perf_counter()
    if path == "streaming":
        rows = len(tunelab(data, tokenizer, choice, home, 0).train)
    else:  # tunelab before streaming: every example, then every row, held as Python objects
        import datasets

        from tunelab.core.config import RunConfig
        from tunelab.engine.data import load_reports, tokenize_reports

        config = RunConfig(dataset=[str(data)], template="chatml", cutoff_len=CUTOFF)
        encoded, _ = tokenize_reports(config, load_reports(config), tokenizer, choice)
        rows = len(datasets.Dataset.from_list(encoded))
    seconds = time.perf_counter() - start
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # the largest worker, shared pages too
    print(json.dumps({"rows": rows, "seconds": round(seconds, 1), "peak_rss_mb": round(_high_water_mb()),
                      "worker_peak_rss_mb": round(workers)}))


def _high_water_mb() -> float:
    """This process's peak RSS (VmHWM: ru_maxrss would carry the launching process's peak across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_rss(work: Path, data: Path, tokenizer_dir: Path, sizes: list[int]) -> dict[str, Any]:
    """Peak RSS per dataset size, each in its own process, for the streaming and the in-memory path."""
    out: dict[str, Any] = {}
    for path in ("streaming", "in_memory"):
        for size in sizes:
            subset = work / f"chats-{size}.jsonl"
            with data.open() as source, subset.open("w") as sink:
                sink.writelines(itertools.islice(source, size))
            home = work / f"home-{path}-{size}"
            result = subprocess.run([sys.executable, __file__, "--rss-child", str(subset), str(tokenizer_dir), str(home),
                                     path], capture_output=True, text=True, check=True)
            out.setdefault(path, {})[str(size)] = json.loads(result.stdout.strip().splitlines()[-1])
            print(f"  rss {path} {size} rows: {out[path][str(size)]}", flush=True)
            shutil.rmtree(home, ignore_errors=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--rss-rows", type=int, nargs="*", default=[12_500, 25_000, 50_000])
    parser.add_argument("--other", type=float, default=0.0, help="share of sentences given one non-ASCII word")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cpu-preprocess.json")
    parser.add_argument("--rss-child", nargs=4, metavar=("DATA", "TOKENIZER", "HOME", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        data, tokenizer_dir, home, path = args.rss_child
        rss_child(Path(data), Path(tokenizer_dir), Path(home), path)
        return 0
    import datasets

    datasets.disable_progress_bars()
    work = Path(tempfile.mkdtemp(prefix="tunelab-preprocess-"))
    try:
        return run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, work: Path) -> int:
    data = work / "chats.jsonl"
    _, generate_s, _ = timed(write_conversations, data, max([args.rows, *args.rss_rows]), 0, args.other)
    full = work / "chats-bench.jsonl"
    with data.open() as source, full.open("w") as sink:
        sink.writelines(itertools.islice(source, args.rows))
    _, train_s, _ = timed(train_tokenizer, full, work / "tokenizer")
    tokenizer, choice = load_tokenizer(work / "tokenizer")
    print(f"{args.rows} conversations ({generate_s:.1f} s), 32k BPE ({train_s:.1f} s, vocab {len(tokenizer)})", flush=True)
    load = [os.getloadavg()[0]]
    theirs, base_s, base_cpu = timed(baseline, full, tokenizer, work / "hf-cache")
    print(f"baseline: {base_s:.1f} s ({base_cpu:.1f} CPU s)", flush=True)
    one, one_s, one_cpu = timed(tunelab, full, tokenizer, choice, work / "home-1", 1)
    print(f"tunelab, 1 worker: {one_s:.1f} s ({one_cpu:.1f} CPU s)", flush=True)
    ours, ours_s, ours_cpu = timed(tunelab, full, tokenizer, choice, work / "home-auto", 0)
    print(f"tunelab, auto workers: {ours_s:.1f} s ({ours_cpu:.1f} CPU s)", flush=True)
    _, cached_s, _ = timed(tunelab, full, tokenizer, choice, work / "home-auto", 0)
    load.append(os.getloadavg()[0])
    same = identical(ours.train, theirs) and identical(one.train, theirs)
    tokens = sum(len(ids) for batch in ours.train.select_columns(["input_ids"]).iter(1000) for ids in batch["input_ids"])
    rss = measure_rss(work, data, work / "tokenizer", args.rss_rows)
    from tunelab.engine.prepare import worker_count

    wall = {"baseline": base_s, "tunelab_1_worker": one_s, "tunelab_auto": ours_s}
    cpu = {"baseline": base_cpu, "tunelab_1_worker": one_cpu, "tunelab_auto": ours_cpu}
    results = {
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores, shared with other jobs while "
                   f"measured (1-min load average {load[0]:.1f} before, {load[1]:.1f} after)",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "rows": args.rows, "other": args.other, "tokens": tokens, "vocab": len(tokenizer), "cutoff_len": CUTOFF, "template": "chatml",
        "workers_auto": worker_count(0, args.rows),
        "wall_s": {k: round(v, 1) for k, v in wall.items()} | {"tunelab_cached": round(cached_s, 2)},
        "cpu_s": {k: round(v, 1) for k, v in cpu.items()},
        "examples_per_s": {k: round(args.rows / v) for k, v in wall.items()},
        "examples_per_cpu_s": {k: round(args.rows / v) for k, v in cpu.items()},
        "speedup_wall": {k: round(base_s / v, 2) for k, v in wall.items() if k != "baseline"},
        "speedup_cpu": {k: round(base_cpu / v, 2) for k, v in cpu.items() if k != "baseline"},
        "identical_input_ids_and_labels": same,
        "peak_rss_mb": rss,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    if not same:
        print("FAIL: tunelab's input_ids/labels differ from the baseline's", file=sys.stderr)
        return 1
    if base_s / ours_s < 3:
        print(f"FAIL: {base_s / ours_s:.2f}x the baseline, short of 3x", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
