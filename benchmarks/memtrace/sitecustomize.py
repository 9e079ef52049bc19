"""Where reserved GPU memory comes from, in any process of a benchmark or a `tunelab train` run.

    TUNELAB_MEMTRACE=/tmp/trace PYTHONPATH=benchmarks/memtrace:$PYTHONPATH python3 benchmarks/product_bench.py ...

Python imports this file at start-up in every process (it is a ``sitecustomize``), which then records the CUDA
caching allocator's history with Python frames and, at exit, writes TUNELAB_MEMTRACE/<pid>.json (analyze.py's
summary: the allocator's peaks, the segments left per stream, which code grew reserved memory and what was live at
the allocated peak). Recording slows a step down; read memory from it, not speed. The trainer's own allocator
default (expandable segments, engine/train.py) is applied here first, since recording starts the allocator.
"""

import atexit
import os
import sys

_DIR = os.environ.get("TUNELAB_MEMTRACE")


def _is_trainer() -> bool:
    try:
        with open("/proc/self/cmdline", "rb") as f:
            return b"tunelab.engine.train" in f.read()
    except OSError:
        return False


if _DIR:
    if _is_trainer() and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    import torch

    torch.cuda.memory._record_memory_history(enabled="all", context="all", stacks="python", max_entries=3_000_000)

    def _dump() -> None:
        import json

        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from analyze import summarize

        if not torch.cuda.is_initialized():
            return
        out = {"argv": sys.argv, **summarize(torch.cuda.memory._snapshot(), torch.cuda.memory_stats())}
        os.makedirs(_DIR, exist_ok=True)
        tmp = os.path.join(_DIR, f".{os.getpid()}.json.tmp")
        with open(tmp, "w") as f:
            json.dump(out, f, indent=1)
        os.replace(tmp, os.path.join(_DIR, f"{os.getpid()}.json"))

    atexit.register(_dump)
