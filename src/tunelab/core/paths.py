"""Where tunelab's shipped resources and caches live."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]
CHECKOUT_ROOT = PACKAGE_DIR.parents[1]


def resource_dir(name: str) -> Path:
    """Return a shipped resource folder (templates, data, webui): inside the wheel, else the checkout."""
    packaged = PACKAGE_DIR / name
    if packaged.is_dir():
        return packaged
    return CHECKOUT_ROOT / name


def home_dir() -> Path:
    """tunelab's cache root: $TUNELAB_HOME, else ~/.cache/tunelab."""
    root = os.environ.get("TUNELAB_HOME") or Path.home() / ".cache" / "tunelab"
    return Path(root)


def runs_dir() -> Path:
    """Default parent folder of run directories: $TUNELAB_RUNS, else ./runs."""
    return Path(os.environ.get("TUNELAB_RUNS") or "runs")
