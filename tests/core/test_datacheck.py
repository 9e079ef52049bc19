"""The token-length histogram's bins: they cover every length and the cutoff, the cutoff ends a bin, and no bin
starts below the shortest length (never below 0)."""

from __future__ import annotations

import pytest

from tunelab.core.datacheck import histogram_bins, histogram_lines


@pytest.mark.parametrize("lengths, cutoff", [([3], 1024), ([1, 2, 3, 50, 100], 10), ([5, 7, 7, 9, 30, 31, 64], 20),
                                             ([0, 5], 10), ([400, 900], 100)])
def test_bins_start_at_the_shortest_length_and_cover_everything(lengths: list[int], cutoff: int) -> None:
    bins = histogram_bins(lengths, cutoff)
    assert bins[0][0] == min(min(lengths), cutoff) >= 0
    assert all(low <= high for low, high, _ in bins)
    assert all(high + 1 == low for (_, high, _), (low, _, _) in zip(bins, bins[1:]))  # contiguous
    assert any(high == cutoff for _, high, _ in bins)  # the cutoff ends a bin
    assert bins[-1][1] >= max(lengths) and sum(count for _, _, count in bins) == len(lengths)
    for length in lengths:
        assert sum(count for low, high, count in bins if low <= length <= high) >= 1


def test_only_the_first_bin_is_clamped() -> None:
    assert histogram_bins([1, 2, 3, 50, 100], 10)[:2] == [(1, 1, 1), (2, 10, 2)]
    assert histogram_bins([3], 1024)[:2] == [(3, 78, 1), (79, 164, 0)]
    assert histogram_lines([1, 2, 3, 50, 100], 10)[0].split()[0] == "1-1"
