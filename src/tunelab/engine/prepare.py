"""Tokenize a stream of canonical examples in chunks, in several processes, into Arrow shards on disk.

Memory stays bounded whatever the dataset's size: the parent reads examples one at a time, hands chunks of
CHUNK examples to the workers (at most two per worker in flight) and keeps only their stats; each worker
writes its chunk's rows to its own shard file (Arrow IPC stream, what ``datasets`` memory-maps). Chunks are
numbered, so the shards concatenate in the order of the data and the result is the same for any number of
workers. Workers are forked where the platform allows, as ``datasets.map(num_proc=...)`` does: they inherit the
tokenizer and template, and run only tunelab's encoding, tokenizers and pyarrow (no lock of another thread of
the parent, such as tqdm's monitor, is taken in them); elsewhere they are spawned and get the job pickled.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from itertools import chain, count, islice
from pathlib import Path
from typing import Any

from tunelab.core.config import RunConfig
from tunelab.engine.tokenize import IGNORE, EncodeStats

log = logging.getLogger(__name__)

CHUNK = 1000  # examples per task: big enough to amortise a call, small enough to report progress often
Progress = Callable[[int, int], None]  # (examples done, examples in all)


@dataclass(frozen=True)
class EncodeJob:
    """What every worker needs: the run's settings, its tokenizer and its template choice."""

    config: RunConfig
    tokenizer: Any
    choice: Any  # TemplateChoice | None


@dataclass
class StreamResult:
    """What an encode pass produced: the stats, the shard files in order and, when asked for, each kept row's
    (length, index of its first trained token)."""

    stats: EncodeStats
    shards: list[Path] = field(default_factory=list)
    lengths: list[tuple[int, int]] = field(default_factory=list)


def worker_count(setting: int, examples: int) -> int:
    """Processes to tokenize with: the setting (0: one per CPU core this process may use), never more than chunks."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    wanted = setting or cores
    return max(1, min(wanted, -(-examples // CHUNK)))


def encode_stream(
    job: EncodeJob,
    examples: Iterable[dict],
    *,
    total: int,
    out_dir: Path | None,
    workers: int,
    lengths: bool = False,
    progress: Progress | None = None,
) -> StreamResult:
    """Encode ``examples`` (``total`` of them) with the run's stage; rows go to shards in ``out_dir`` (None: none
    are kept, e.g. to measure ``lengths`` only)."""
    result = StreamResult(EncodeStats())
    tasks = _tasks(examples, CHUNK, out_dir, lengths)
    report = _Reporter(progress, total)
    if workers <= 1:
        _set_job(job)
        try:
            for task in tasks:
                _merge(result, task, _encode_chunk(task), report)
        finally:
            _set_job(None)
    else:
        with _pool(job, workers) as pool:
            pending: deque[tuple[tuple, Any]] = deque()
            for task in tasks:
                pending.append((task, pool.apply_async(_encode_chunk, (task,))))
                if len(pending) >= 2 * workers:
                    done, future = pending.popleft()
                    _merge(result, done, future.get(), report)
            while pending:
                done, future = pending.popleft()
                _merge(result, done, future.get(), report)
    report.finish()
    return result


def _tasks(examples: Iterable[dict], size: int, out_dir: Path | None, lengths: bool) -> Iterator[tuple]:
    """(index, number of examples before it, examples, shard path or None, lengths wanted) per chunk."""
    iterator = iter(examples)
    first = 0
    for index in count():
        chunk = list(islice(iterator, size))
        if not chunk:
            return
        shard = out_dir / f"shard-{index:06d}.arrow" if out_dir is not None else None
        yield index, first, chunk, shard, lengths
        first += len(chunk)


def _merge(result: StreamResult, task: tuple, outcome: tuple[EncodeStats, list[tuple[int, int]] | None, bool],
           report: _Reporter) -> None:
    stats, measured, wrote = outcome
    for item in fields(EncodeStats):
        mine, theirs = getattr(result.stats, item.name), getattr(stats, item.name)
        if isinstance(mine, int):
            setattr(result.stats, item.name, mine + theirs)
    result.stats.refusals.extend(stats.refusals[: max(0, 5 - len(result.stats.refusals))])
    if wrote:
        result.shards.append(task[3])
    if measured:
        result.lengths.extend(measured)
    report.add(len(task[2]))


class _Reporter:
    """Calls ``progress`` as chunks finish: at the start, at most about once a second, and at the end."""

    def __init__(self, progress: Progress | None, total: int):
        self.progress, self.total, self.done, self.last = progress, total, 0, 0.0
        self._call()

    def add(self, count: int) -> None:
        self.done += count
        if time.monotonic() - self.last >= 1.0:
            self._call()

    def finish(self) -> None:
        if self.done != self._reported:
            self._call()

    def _call(self) -> None:
        self.last, self._reported = time.monotonic(), self.done
        if self.progress is not None:
            self.progress(self.done, self.total)


# -- the workers --------------------------------------------------------------------------------------------

_JOB: EncodeJob | None = None


def _set_job(job: EncodeJob | None) -> None:
    global _JOB
    _JOB = job


def _encode_chunk(task: tuple) -> tuple[EncodeStats, list[tuple[int, int]] | None, bool]:
    """Encode one chunk with the stage's encoder: (stats, lengths if wanted, whether a shard was written)."""
    from tunelab.engine.stages import get_stage

    assert _JOB is not None, "the worker has no job"
    _, first, examples, shard, lengths = task
    stats = EncodeStats(examples=first)  # refusals number examples from the chunk's place in the data
    rows = get_stage(_JOB.config.stage).encode(_JOB.config, examples, _JOB.tokenizer, _JOB.choice, stats)
    stats.examples -= first
    measured = [(len(row["input_ids"]), _first_trained(row["labels"])) for row in rows] if lengths else None
    if shard is not None and rows:
        write_shard(shard, rows)
    return stats, measured, shard is not None and bool(rows)


def _first_trained(labels: list[int]) -> int:
    return next((i for i, label in enumerate(labels) if label != IGNORE), len(labels))


def write_shard(path: Path, rows: list[dict]) -> None:
    """Write rows of token-id lists as one Arrow IPC stream file (what ``datasets.Dataset.from_file`` maps)."""
    import pyarrow as pa

    table = pa.Table.from_pydict({name: _id_lists([row[name] for row in rows]) for name in rows[0]})
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)


def _id_lists(lists: list[list[int]]) -> Any:
    """A list<int64> Arrow column (the type datasets infers for them), built through flat numpy arrays: about 8x
    faster than letting pyarrow convert the nested Python lists."""
    import numpy as np
    import pyarrow as pa

    offsets = np.zeros(len(lists) + 1, dtype=np.int64)
    np.cumsum([len(ids) for ids in lists], out=offsets[1:])
    values = np.fromiter(chain.from_iterable(lists), dtype=np.int64, count=int(offsets[-1]))
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values))


def _init_worker(job: EncodeJob | None) -> None:
    """A worker dies on SIGTERM and leaves Ctrl-C to its parent (not the handlers a forked trainer installed)."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if job is not None:  # spawned: the job came pickled
        _set_job(job)


@contextmanager
def _pool(job: EncodeJob, workers: int) -> Iterator[Any]:
    """A process pool whose workers hold ``job``; each tokenizes serially (the processes are the parallelism)."""
    fork = "fork" in multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if fork else "spawn")
    previous = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # read by the workers' tokenizers (and by spawned children)
    _set_job(job)
    pool = context.Pool(workers, initializer=_init_worker, initargs=(None if fork else job,))
    try:
        yield pool
    except BaseException:
        pool.terminate()
        raise
    else:
        pool.close()  # all results are in: the workers finish on their own
    finally:
        pool.join()
        _set_job(None)
        if previous is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = previous
