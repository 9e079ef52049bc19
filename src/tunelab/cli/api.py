"""`tunelab api --model ... [--adapter ...]`: an OpenAI-compatible server (uvicorn) for a model and its adapters.

Loopback by default; binding any other address needs an API key (--api-key or $TUNELAB_API_KEY).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from contextlib import ExitStack
from pathlib import Path

from tunelab.cli.serving import add_model_arguments, held_gpu, open_from_args, user_errors

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def register(commands: argparse._SubParsersAction) -> None:
    """Add the `api` command."""
    parser = commands.add_parser("api", help="serve a model and adapters over an OpenAI-compatible HTTP API")
    add_model_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    parser.add_argument("--api-key", help="require this bearer key (default $TUNELAB_API_KEY); needed off loopback")
    parser.add_argument("--max-new-tokens", type=int, default=512, help="default max_tokens of a request")
    parser.add_argument("--allow-file-urls", action="store_true",
                        help="accept file: image URLs off loopback too (on loopback they are always accepted)")
    parser.add_argument("--ready-file", help=argparse.SUPPRESS)  # JSON {port, pid, ...} once serving; {waiting} while queued
    parser.add_argument("--exit-with-parent", action="store_true", help=argparse.SUPPRESS)  # the studio's worker
    parser.set_defaults(handler=_api)


def _api(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.exit_with_parent:
        threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()
    api_key = args.api_key or os.environ.get("TUNELAB_API_KEY") or None
    if args.host not in LOOPBACK and not api_key:
        print(f"tunelab: --host {args.host} exposes the API beyond this machine; give --api-key KEY "
              "(or set TUNELAB_API_KEY)", file=sys.stderr)
        return 2
    try:
        sock = _bind(args.host, args.port)
    except OSError as exc:
        print(f"tunelab: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _exit_quietly)  # stopped while queued or loading: release the GPU on the way out
    holder = "the Chat tab's model" if args.exit_with_parent else "tunelab api serving"
    waited: list[str] = []
    try:
        with ExitStack() as stack:
            try:
                devices = stack.enter_context(held_gpu(args, holder, lambda reason: _note_wait(args.ready_file, reason, waited)))
            except ValueError as exc:  # the hold left the queue before it got its GPU (stopped from elsewhere)
                print(f"tunelab: {exc}", file=sys.stderr)
                return 2
            if waited and args.ready_file:
                Path(args.ready_file).unlink(missing_ok=True)  # the GPU is ours: loading, no longer queued
            try:
                engine = open_from_args(args)
            except user_errors() as exc:
                print(f"tunelab: {exc}", file=sys.stderr)
                return 2
            try:
                return _serve(engine, sock, args, api_key, devices)
            finally:
                engine.close()
    except KeyboardInterrupt:
        return 130


def _note_wait(ready_file: str | None, reason: str, waited: list[str]) -> None:
    """Say why the model waits for a GPU: printed, and in the ready file for the studio that started the worker."""
    print(f"tunelab api: queued, {reason}", flush=True)
    waited.append(reason)
    if ready_file:
        from tunelab.core.files import write_json_atomic

        write_json_atomic(Path(ready_file), {"waiting": reason, "pid": os.getpid()})


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    return sock


def _serve(engine, sock: socket.socket, args: argparse.Namespace, api_key: str | None, devices: list[str]) -> int:
    import uvicorn

    from tunelab.api.app import create_app

    files = args.allow_file_urls or args.host in LOOPBACK  # a remote client must not read this machine's files
    app = create_app(engine, api_key=api_key, default_max_tokens=args.max_new_tokens, allow_file_urls=files)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=5))
    port = sock.getsockname()[1]
    host = f"[{args.host}]" if ":" in args.host else args.host
    names = [m.id for m in engine.models()]
    threading.Thread(target=_announce, args=(server, port, names, args.ready_file, devices), daemon=True).start()
    print(f"tunelab api: serving {', '.join(names)} with {engine.name} at http://{host}:{port}/v1"
          f"{' on GPU ' + ','.join(devices) if devices else ''}{' (API key required)' if api_key else ''}", flush=True)
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal to the previous handler: make
    # that a normal exit, so the engine (and a vllm server it started) is closed by the caller's `finally`.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _exit_quietly)
    server.run(sockets=[sock])
    return 0


def _exit_quietly(signum: int, frame: object) -> None:
    raise SystemExit(0)


def _watch_parent(parent: int) -> None:
    """A worker whose parent (the studio) is gone shuts down instead of holding the model forever."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGTERM)


def _announce(server, port: int, names: list[str], ready_file: str | None, devices: list[str]) -> None:
    """Once uvicorn accepts connections, write the ready file (atomically) for whoever started us."""
    while not server.started:
        if server.should_exit:
            return
        time.sleep(0.05)
    if ready_file:
        from tunelab.core.files import write_json_atomic

        write_json_atomic(Path(ready_file), {"port": port, "pid": os.getpid(), "models": names, "devices": devices})
    logging.getLogger(__name__).info("ready on port %d: %s", port, json.dumps(names))
