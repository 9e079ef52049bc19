"""`tunelab webui` closes cleanly on SIGINT even when started with SIGINT ignored (as a shell script's background
job is), and on SIGTERM (kill, systemctl stop): a real studio process, real signals."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_the_studio_closes_on_a_signal_started_with_sigint_ignored(studio_server, tmp_path: Path, signum: int) -> None:
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # inherited through exec, as from `script &`
    try:
        server = studio_server().start()
    finally:
        signal.signal(signal.SIGINT, previous)
    assert server.process is not None
    begin = time.time()
    server.process.send_signal(signum)
    try:
        code = server.process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the studio ignored {signal.Signals(signum).name} for 15 s")
    assert code == 0, server.log.read_text()[-2000:]  # the clean path (the job store closed), not killed by it
    print(f"closed {time.time() - begin:.1f} s after {signal.Signals(signum).name}")

