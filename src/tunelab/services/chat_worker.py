"""The chat tab's model worker: a `tunelab api` subprocess on loopback that owns the model, and the service
object the UI holds. The UI process never imports torch; a crash or out-of-memory kill in generation ends
only the worker, and the UI reports it.

``ChatService.load`` starts a worker for the ``hf`` or ``vllm`` engine (its own process group, a private API
key, a log file), or connects to a remote OpenAI-compatible server for ``openai``. Streams go through the
``openai`` engine client either way. On a GPU machine the worker asks the runs folder's job queue for its GPU
like every job (services.holds): it waits while jobs hold every GPU (``ChatService.waiting`` says why), holds
its GPU while loaded, and frees it when unloaded or gone.
"""

from __future__ import annotations

import atexit
import logging
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tunelab.core.files import read_json
from tunelab.core.generation import Delta, EngineCrashed, InferenceError, SamplingParams
from tunelab.core.serving import EngineOptions
from tunelab.services.runner import signal_group

log = logging.getLogger(__name__)


def worker_argv(
    model: str | None, adapters: list[str], options: EngineOptions, template: str, ready_file: Path, runs_dir: Path | None = None,
) -> list[str]:
    """The `tunelab api` command line of a worker (``runs_dir``: whose job queue hands out its GPU)."""
    argv = [sys.executable, "-m", "tunelab.cli", "api", "--engine", options.engine, "--dtype", options.dtype,
            "--template", template, "--host", "127.0.0.1", "--port", "0", "--ready-file", str(ready_file), "--exit-with-parent"]
    if runs_dir:
        argv += ["--runs-dir", str(runs_dir)]
    if model:
        argv += ["--model", model]
    for adapter in adapters:
        argv += ["--adapter", adapter]
    if options.vllm_python:
        argv += ["--vllm-python", options.vllm_python]
    if options.max_model_len:
        argv += ["--max-model-len", str(options.max_model_len)]
    if options.trust_remote_code:
        argv.append("--trust-remote-code")
    return argv


class Worker:
    """One `tunelab api` process group on a loopback port."""

    def __init__(self, argv: list[str], ready_file: Path, log_path: Path, api_key: str):
        self.ready_file, self.log_path, self.api_key = ready_file, log_path, api_key
        self.port: int | None = None
        self.devices: list[str] = []
        self.waiting: str | None = None  # why it is queued for a GPU, while it is
        env = {**os.environ, "TUNELAB_API_KEY": api_key, "PYTHONUNBUFFERED": "1"}
        with open(log_path, "ab") as log_file:
            self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                                            env=env, start_new_session=True, close_fds=True)

    @property
    def base_url(self) -> str:
        """The worker's OpenAI base URL."""
        return f"http://127.0.0.1:{self.port}/v1"

    def wait_ready(self, timeout: float, cancelled: Callable[[], bool] = lambda: False) -> None:
        """Block until the worker serves (its ready file says so); raise with its last log line if it exits.
        Time spent queued for a GPU does not count toward ``timeout``: loading has not begun."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready = read_json(self.ready_file) or {}
            if "port" in ready:
                self.port, self.devices, self.waiting = int(ready["port"]), list(ready.get("devices") or []), None
                return
            self.waiting = ready.get("waiting")
            if self.waiting:
                deadline = time.monotonic() + timeout
            if self.process.poll() is not None:
                raise InferenceError(self.failure())
            if cancelled():
                raise InferenceError("loading was cancelled")
            time.sleep(0.2)
        self.stop()
        raise InferenceError(f"the model worker did not get ready within {timeout:.0f} s (log: {self.log_path})")

    def alive(self) -> bool:
        """Whether the worker process still runs."""
        return self.process.poll() is None

    def failure(self) -> str:
        """Why the worker ended, in one line: its own message, or the signal that killed it."""
        code = self.process.poll()
        if code is None:
            return "the model worker is running"
        if code < 0:
            name = signal.Signals(-code).name
            hint = " (likely out of memory)" if -code == signal.SIGKILL else ""
            return f"the model worker was killed by {name}{hint}; load the model again (log: {self.log_path})"
        return f"the model worker exited with code {code}: {self.last_error()}"

    def last_error(self) -> str:
        """The most telling line of the log: the worker's own 'tunelab:' message, else the last line."""
        try:
            lines = [ln.strip() for ln in self.log_path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
        except OSError:
            return "(no log)"
        own = [ln for ln in lines if ln.startswith("tunelab: ")]
        if own:
            return own[-1][len("tunelab: "):]
        return (lines[-1] if lines else "(empty log)") + f" (log: {self.log_path})"

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM the process group (worker and any vllm child), SIGKILL after ``grace`` seconds."""
        if self.process.poll() is None:
            signal_group(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                signal_group(self.process.pid, signal.SIGKILL)
                self.process.wait()
        signal_group(self.process.pid, signal.SIGKILL)  # stragglers of the group (a vllm server)


class ChatService:
    """The chat tab's connection to a model: a worker it started, or a remote server."""

    def __init__(self, log_dir: Path | None = None, startup_timeout: float = 900.0, runs_dir: Path | None = None):
        self.log_dir = Path(log_dir or tempfile.mkdtemp(prefix="tunelab-chat-"))
        self.startup_timeout, self.runs_dir = startup_timeout, runs_dir
        self.worker: Worker | None = None
        self._starting: Worker | None = None
        self._cancel = threading.Event()
        self.client: Any = None
        self.description = ""
        self.engine_name = ""
        self._lock = threading.Lock()
        atexit.register(self.unload)  # never leave a worker holding a model after the studio exits

    @property
    def loaded(self) -> bool:
        """Whether a model is loaded (a worker that may since have died still counts: streams then report it)."""
        return self.client is not None

    def load(self, model: str | None, adapters: list[str], options: EngineOptions, template: str = "auto") -> list[Any]:
        """Unload what is loaded, then load this; returns the served models (base first)."""
        options.validate()
        with self._lock:
            self._unload()
            from tunelab.engine.inference.remote import OpenAIEngine

            if options.engine == "openai":
                self.client = OpenAIEngine.connect(options.base_url or "", options.api_key)
                self.description, self.engine_name = f"{options.base_url}", options.engine
                return self.client.models()
            self.log_dir.mkdir(parents=True, exist_ok=True)
            stamp = time.strftime("%Y%m%d-%H%M%S")
            ready = self.log_dir / f"worker-{stamp}-{os.getpid()}.ready.json"
            ready.unlink(missing_ok=True)
            api_key = secrets.token_hex(16)
            argv = worker_argv(model, adapters, options, template, ready, self.runs_dir)
            worker = self._starting = Worker(argv, ready, self.log_dir / f"worker-{stamp}.log", api_key)
            try:
                worker.wait_ready(self.startup_timeout, cancelled=self._cancel.is_set)
                self.client = OpenAIEngine(worker.base_url, api_key)
                models = self.client.models()
            except BaseException:
                worker.stop()
                raise
            finally:
                self._starting = None
            self.worker, self.engine_name = worker, options.engine
            where = f" on GPU {','.join(worker.devices)}" if worker.devices else ""
            self.description = f"worker pid {worker.process.pid}{where}"
            return models

    def starting_note(self) -> str:
        """While load() waits for a worker: the last line of its log ('' otherwise), to show what it is doing."""
        worker = self._starting
        if worker is None:
            return ""
        try:
            with worker.log_path.open("rb") as handle:
                handle.seek(max(handle.seek(0, 2) - 4096, 0))
                lines = handle.read().decode("utf-8", "replace").splitlines()
        except OSError:
            return ""
        last = next((line.strip() for line in reversed(lines) if line.strip()), "")
        return last[:160]

    @property
    def waiting(self) -> str | None:
        """While a load waits in the job queue for a GPU: why (which job holds it)."""
        starting = self._starting
        return starting.waiting if starting is not None else None

    def unload(self) -> None:
        """Stop the worker (if any) and forget the connection; a load still waiting for a GPU gives up."""
        self._cancel.set()
        with self._lock:
            self._cancel.clear()
            self._unload()

    def _unload(self) -> None:
        if self.client is not None:
            self.client.close()
        if self.worker is not None:
            self.worker.stop()
        self.client, self.worker, self.description, self.engine_name = None, None, "", ""

    def models(self) -> list[Any]:
        """Served models (empty when nothing is loaded)."""
        return self.client.models() if self.client is not None else []

    def chat(self, model: str, messages: list[dict], params: SamplingParams, cancel: threading.Event | None = None) -> Iterator[Delta]:
        """Stream a reply; a dead worker is reported as EngineCrashed with the reason."""
        if self.client is None:
            raise InferenceError("no model is loaded: choose a model and press Load")
        try:
            yield from self.client.chat(model, messages, params, cancel)
        except EngineCrashed:
            worker = self.worker
            for _ in range(20 if worker is not None else 0):  # the socket may break just before the exit shows
                if worker is not None and not worker.alive():
                    raise EngineCrashed(worker.failure()) from None
                time.sleep(0.1)
            raise


def side_by_side(streams: list[Callable[[threading.Event], Iterator[Delta]]]) -> Iterator[tuple[int, Delta | BaseException]]:
    """Run several reply streams at once (compare mode); yield (index, delta or the error it raised).

    A worker serves one request at a time, so the second usually starts when the first ends; a remote server
    that batches streams both together. Closing this generator cancels every stream."""
    import queue

    events: queue.Queue = queue.Queue()
    cancel = threading.Event()
    done = object()

    def pump(index: int, open_stream: Callable[[threading.Event], Iterator[Delta]]) -> None:
        try:
            for delta in open_stream(cancel):
                events.put((index, delta))
                if cancel.is_set():
                    break
        except BaseException as exc:  # handed to the caller
            events.put((index, exc))
        finally:
            events.put((index, done))

    threads = [threading.Thread(target=pump, args=(i, s), daemon=True) for i, s in enumerate(streams)]
    for thread in threads:
        thread.start()
    remaining = len(threads)
    try:
        while remaining:
            index, item = events.get()
            if item is done:
                remaining -= 1
                continue
            yield index, item
    finally:
        cancel.set()
