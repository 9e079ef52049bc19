"""The `tunelab api` server every API test talks to: one real subprocess per session on the demo model and the
trained identity adapter, with an API key."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest

KEY = "test-key-123"


@pytest.fixture(scope="session")
def server(demo_adapter_run: Path, tmp_path_factory: pytest.TempPathFactory):
    """`tunelab api --model demo --adapter RUN --port 0` with an API key; yields (base_url, adapter name)."""
    folder = tmp_path_factory.mktemp("api")
    ready, log = folder / "ready.json", folder / "api.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "tunelab.cli", "api", "--model", "demo", "--adapter", str(demo_adapter_run),
             "--port", "0", "--api-key", KEY, "--ready-file", str(ready)],
            stdout=out, stderr=subprocess.STDOUT,
        )
    deadline = time.time() + 300
    while not ready.is_file():
        assert process.poll() is None and time.time() < deadline, log.read_text()[-3000:]
        time.sleep(0.2)
    port = json.loads(ready.read_text())["port"]
    yield f"http://127.0.0.1:{port}/v1", demo_adapter_run.name
    process.terminate()
    assert process.wait(30) == 0, log.read_text()[-3000:]  # uvicorn shuts down cleanly on SIGTERM


@pytest.fixture
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server[0], api_key=KEY, max_retries=0)


