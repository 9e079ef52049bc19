"""Run the studio as a real `python -m tunelab.cli webui` subprocess, so closing and restarting it is real."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
]

# header words drawn over two lines (a word broken mid-way): one list entry per broken word
BROKEN_WORDS_JS = """(sel) => { const broken = [];
  for (const th of document.querySelectorAll(sel.split(',').map(s => s.trim() + ' th').join(','))) {
    const walker = document.createTreeWalker(th, NodeFilter.SHOW_TEXT);
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
      for (const m of node.data.matchAll(/\\S+/g)) {
        const r = document.createRange(); r.setStart(node, m.index); r.setEnd(node, m.index + m[0].length);
        if (new Set(Array.from(r.getClientRects()).map(x => Math.round(x.top))).size > 1) broken.push(m[0]);
      } } }
  return broken; }"""


def shot(page, name: str, locator=None) -> None:
    """Save a screenshot to $TUNELAB_SCREENSHOTS/<name>.png when that is set (``make screenshots``)."""
    folder = os.environ.get("TUNELAB_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (locator or page).screenshot(path=str(Path(folder) / f"{name}.png"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class StudioServer:
    """One `tunelab webui` process over a runs folder; restartable on the same port."""

    def __init__(self, runs_dir: Path, log: Path, args: tuple[str, ...] = (), home: Path | None = None):
        self.runs_dir, self.log, self.args, self.home = runs_dir, log, args, home
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.process: subprocess.Popen | None = None
        self.startup_s = 0.0

    def start(self, timeout: float = 120.0) -> "StudioServer":
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "GRADIO_ANALYTICS_ENABLED": "False"}
        if self.home is not None:  # its own TUNELAB_HOME: a fresh cache
            env["TUNELAB_HOME"] = str(self.home)
        begin = time.time()
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tunelab.cli", "webui", "--port", str(self.port), "--runs-dir", str(self.runs_dir), *self.args],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=ROOT,
            )
        while time.time() - begin < timeout:
            if self.process.poll() is not None:
                raise AssertionError(f"the studio exited ({self.process.returncode}):\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url, timeout=2) as response:
                    if response.status == 200:
                        self.startup_s = time.time() - begin
                        return self
            except urllib.error.HTTPError:  # answering, e.g. 401 behind a login
                self.startup_s = time.time() - begin
                return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        raise AssertionError(f"the studio did not answer within {timeout}s:\n{self.log.read_text()[-3000:]}")

    def imported_torch(self) -> bool:
        """Whether the studio process has torch loaded (its shared library mapped)."""
        assert self.process is not None
        return "libtorch" in Path(f"/proc/{self.process.pid}/maps").read_text()

    def stop(self) -> None:
        """End the studio process (Ctrl-C); trainers it started live in their own process groups."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def studio_server(tmp_path: Path):
    """A factory for studio servers over tmp_path/runs (``home``: their own TUNELAB_HOME); every server is stopped
    afterwards."""
    servers: list[StudioServer] = []

    def make(*args: str, home: Path | None = None) -> StudioServer:
        server = StudioServer(tmp_path / "runs", tmp_path / "studio.log", args, home)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()
    for status in (tmp_path / "runs").glob("*/status.json"):  # never leave a trainer behind a failed test
        pgid = json.loads(status.read_text()).get("pgid")
        cmdline = Path(f"/proc/{pgid}/cmdline")
        if pgid and cmdline.is_file() and str(status.parent).encode() in cmdline.read_bytes():
            try:
                os.killpg(pgid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


@pytest.fixture
def browser():
    """Debian's chromium driven by Playwright (skipped where it is not installed); closed afterwards."""
    if not Path(CHROMIUM).is_file():
        pytest.skip("needs Debian's chromium (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield launched
        launched.close()
