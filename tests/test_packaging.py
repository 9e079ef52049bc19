"""The package: a non-editable install ships templates, data and the web UI; the CLI starts without torch."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_ships_resources_and_works_installed(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation" if _has_hatchling() else "-q",
         "-w", str(tmp_path / "dist"), str(ROOT)],
        check=True, capture_output=True, text=True,
    )
    wheel = next((tmp_path / "dist").glob("tunelab-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "tunelab/templates/chatml.yaml" in names and "tunelab/templates/llama3_1.jinja" in names
    assert "tunelab/data/dataset_info.json" in names and "tunelab/data/identity.json" in names
    assert "tunelab/webui/__init__.py" in names
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)], check=True)
    probe = (
        "import tunelab, tunelab.webui; from tunelab.core.paths import resource_dir; "
        "from tunelab.core.templates import registry; from tunelab.core.datasets import load_dataset_registry; "
        "assert str(resource_dir('templates')).startswith(%r), resource_dir('templates'); "
        "print(len(registry().templates), len(load_dataset_registry().specs))" % str(target)
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env={"PYTHONPATH": str(target)}, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    families, datasets = map(int, result.stdout.split())
    assert families >= 100 and datasets >= 4


def _has_hatchling() -> bool:
    try:
        import hatchling  # noqa: F401
    except ImportError:
        return False
    return True


def test_cli_imports_no_torch() -> None:
    code = "import sys, tunelab.cli; tunelab.cli.build_parser(); print('torch' in sys.modules, 'gradio' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "False"]


def test_help_lists_the_commands() -> None:
    result = subprocess.run([sys.executable, "-m", "tunelab.cli", "--help"], capture_output=True, text=True, check=True)
    for command in ("train", "data", "templates", "demo"):
        assert command in result.stdout
