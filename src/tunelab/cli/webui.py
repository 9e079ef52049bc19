"""`tunelab webui`: serve the web studio (loopback by default; a password is required on other addresses)."""

from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import socket
import sys
from pathlib import Path

AUTH_HINT = "add --auth USER:PASS or --auth-file FILE (one user:password per line)"


def register(commands: argparse._SubParsersAction) -> None:
    """Add the `webui` command."""
    parser = commands.add_parser("webui", help="open the web studio (train, watch, compare, chat, export)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("TUNELAB_WEBUI_PORT", 7860)), help="port (default 7860)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--auth", metavar="USER:PASS", help="require this login")
    group.add_argument("--auth-file", metavar="FILE", help="require a login from FILE (user:password per line)")
    parser.add_argument("--runs-dir", help="folder of run directories (default ./runs or $TUNELAB_RUNS)")
    parser.add_argument("--config", metavar="FILE", help="YAML run config the Train form starts from")
    parser.add_argument("--lang", default="en", choices=("en", "zh"), help="initial language (switchable in the page)")
    parser.add_argument("--open", action="store_true", help="open a browser tab")
    parser.set_defaults(handler=_webui)


class UsageError(ValueError):
    """A bad command-line value (printed as one line, exit status 2)."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return all(ipaddress.ip_address(info[4][0]).is_loopback for info in socket.getaddrinfo(host, None))
        except (OSError, ValueError):
            return False


def parse_auth(auth: str | None, auth_file: str | None) -> list[tuple[str, str]]:
    """Logins from --auth or --auth-file."""
    if auth is not None:
        user, sep, password = auth.partition(":")
        if not sep or not user or not password:
            raise UsageError(f"--auth {auth!r}: expected USER:PASS")
        return [(user, password)]
    if auth_file is None:
        return []
    path = Path(auth_file)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise UsageError(f"--auth-file {path}: {exc.strerror or exc}") from None
    logins = []
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        user, sep, password = line.strip().partition(":")
        if not sep or not user or not password:
            raise UsageError(f"{path} line {number}: expected user:password")
        logins.append((user, password))
    if not logins:
        raise UsageError(f"{path}: no user:password line")
    return logins


def _webui(args: argparse.Namespace) -> int:
    from tunelab.core.config import ConfigError, load_config

    try:
        logins = parse_auth(args.auth, args.auth_file)
        if not logins and not is_loopback(args.host):
            raise UsageError(f"refusing to serve on {args.host} without a password: {AUTH_HINT}")
        initial = load_config(args.config) if args.config else None
    except (UsageError, ConfigError) as exc:
        print(f"tunelab webui: {exc}", file=sys.stderr)
        return 2
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "urllib3", "gradio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from tunelab.core.paths import runs_dir
    from tunelab.webui.app import launch, make_studio

    studio = make_studio(args.runs_dir or runs_dir(), lang=args.lang, initial_config=initial)
    print(f"tunelab studio: runs in {studio.runs_dir}", flush=True)
    _stop_on_signals()
    try:
        launch(studio, host=args.host, port=args.port, auth=logins, open_browser=args.open)
    except KeyboardInterrupt:
        pass
    finally:
        studio.services["jobs"].close()
    return 0


def _stop_on_signals() -> None:
    """Ctrl-C (SIGINT) and SIGTERM (kill, systemctl stop) both close the studio cleanly. SIGINT is set explicitly:
    a shell script that starts the studio in the background starts it with SIGINT ignored."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, interrupt)
