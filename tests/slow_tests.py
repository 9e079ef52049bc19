"""Regenerate tests/slow_tests.txt from a full run's durations: the tests whose setup + call + teardown took
THRESHOLD seconds or more (a parametrized test by its base name, if any case did). `make test-fast` skips them.

    python -m pytest -q --durations=0 > durations.txt; python tests/slow_tests.py durations.txt [THRESHOLD]
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path

LIST = Path(__file__).with_name("slow_tests.txt")
LINE = re.compile(r"^([0-9.]+)s (?:call|setup|teardown)\s+(\S+)")


def slow_ids(durations: str, threshold: float) -> list[str]:
    """Base node ids of the tests at or over ``threshold`` seconds in a ``pytest --durations=0`` output."""
    seconds: Counter[str] = Counter()
    for line in durations.splitlines():
        if match := LINE.match(line):
            seconds[match.group(2)] += float(match.group(1))
    return sorted({test.split("[")[0] for test, took in seconds.items() if took >= threshold})


def main(argv: list[str]) -> int:
    """Write slow_tests.txt from the durations file named in argv."""
    threshold = float(argv[1]) if len(argv) > 1 else 3.0
    ids = slow_ids(Path(argv[0]).read_text(), threshold)
    header = f"# tests that took {threshold:g} s or more in a full run on 2 CPU cores (tests/slow_tests.py writes this)\n"
    LIST.write_text(header + "".join(f"{test}\n" for test in ids))
    print(f"{len(ids)} slow tests -> {LIST}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
