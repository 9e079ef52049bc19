"""tunelab: a fine-tuning studio for open LLMs (web UI, CLI and Python API)."""

from pathlib import Path as _Path

__version__ = "0.1.0"

# In a source checkout the web UI lives at the repository root (webui/), while the wheel ships it as
# tunelab/webui. Adding the checkout root to this package's search path makes `import tunelab.webui`
# work in both layouts without copying files.
_checkout_root = _Path(__file__).resolve().parents[2]
if not (_Path(__file__).parent / "webui").is_dir() and (_checkout_root / "webui" / "__init__.py").is_file():
    __path__.append(str(_checkout_root))  # type: ignore[name-defined]
