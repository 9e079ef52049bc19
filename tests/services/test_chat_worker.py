"""The chat worker outlives nothing: when the process that started it (the studio) dies, it shuts down."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

SCRIPT = """
import sys, time
from tunelab.core.serving import EngineOptions
from tunelab.services.chat_worker import ChatService
service = ChatService(log_dir=sys.argv[1])
print([m.id for m in service.load("demo", [], EngineOptions(engine="hf"))], service.worker.process.pid, flush=True)
time.sleep(600)
"""


def test_worker_stops_when_the_studio_is_killed(demo_model_dir: Path, tmp_path: Path) -> None:
    studio = subprocess.Popen([sys.executable, "-c", SCRIPT, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        names, pid = studio.stdout.readline().rsplit(" ", 1)
        assert names == "['demo']"
        worker = int(pid)
        assert Path(f"/proc/{worker}").exists()
    finally:
        os.kill(studio.pid, signal.SIGKILL)  # no atexit, no cleanup: only the worker's own watch can help
        studio.wait()
        studio.stdout.close()
    deadline = time.time() + 30
    while _running(worker) and time.time() < deadline:
        time.sleep(0.2)
    assert not _running(worker), "the worker kept running after the studio died"


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"
