"""Pure parts of `tunelab data check`: duplicates, train/validation overlap and a text histogram of token lengths."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any


def example_key(example: dict[str, Any]) -> str:
    """A canonical string of one example (equal examples, equal keys)."""
    return json.dumps(example, sort_keys=True, ensure_ascii=False)


def duplicates(examples: list[dict[str, Any]]) -> int:
    """How many examples repeat an earlier one exactly."""
    counts = Counter(example_key(e) for e in examples)
    return sum(n - 1 for n in counts.values())


def overlap(train: list[dict[str, Any]], validation: list[dict[str, Any]]) -> int:
    """How many validation examples also appear in the training data."""
    seen = {example_key(e) for e in train}
    return sum(example_key(e) in seen for e in validation)


def histogram_bins(lengths: list[int], cutoff: int, bins: int = 12) -> list[tuple[int, int, int]]:
    """(low, high, count) per bin of token lengths covering the lengths and the cutoff, which ends a bin (so no bin
    mixes rows that fit with rows that are cut)."""
    if not lengths:
        return []
    low, top = min(min(lengths), cutoff), max(max(lengths), cutoff) + 1
    step = max(1, -(-(top - low) // bins))
    base = cutoff + 1 - step * -(-(cutoff + 1 - low) // step)
    counts = Counter((length - base) // step for length in lengths)
    # the first bin may start below the shortest length (below 0 even): it starts at that length (or the cutoff)
    return [(max(base + i * step, low), base + (i + 1) * step - 1, counts.get(i, 0)) for i in range(-(-(top - base) // step))]


def histogram_lines(lengths: list[int], cutoff: int, bins: int = 12, width: int = 40) -> list[str]:
    """A text histogram of token lengths with the cutoff marked: one line per bin."""
    table = histogram_bins(lengths, cutoff, bins)
    if not table:
        return ["(no examples)"]
    peak = max(count for _, _, count in table)
    lines = []
    for low, high, count in table:
        mark = " <- cutoff %d" % cutoff if low <= cutoff <= high else ""
        bar = "#" * round(width * count / peak)
        side = ">" if low > cutoff else " "
        lines.append(f"{side}{low:>7}-{high:<7} {count:>7} {bar}{mark}")
    return lines


def length_summary(lengths: list[int]) -> str:
    """min / median / p95 / max of token lengths."""
    if not lengths:
        return "no examples"
    ordered = sorted(lengths)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return f"tokens per example: min {ordered[0]}, median {pick(0.5)}, p95 {pick(0.95)}, max {ordered[-1]}"
