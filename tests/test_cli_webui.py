"""`tunelab webui` refuses to serve other machines without a password, and reports bad options in one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tunelab.cli.webui import UsageError, is_loopback, parse_auth


def webui(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tunelab.cli", "webui", *args], capture_output=True, text=True, timeout=120)


def test_a_public_address_without_auth_is_refused() -> None:
    result = webui("--host", "0.0.0.0", "--port", "1")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "tunelab webui: refusing to serve on 0.0.0.0 without a password: "
        "add --auth USER:PASS or --auth-file FILE (one user:password per line)"
    )
    assert "Traceback" not in result.stderr


def test_bad_auth_and_config_are_one_line_errors(tmp_path: Path) -> None:
    result = webui("--auth", "nopassword")
    assert result.returncode == 2 and result.stderr.strip() == "tunelab webui: --auth 'nopassword': expected USER:PASS"
    bad = tmp_path / "bad.yaml"
    bad.write_text("learning_rate: fast\n")
    result = webui("--config", str(bad))
    assert result.returncode == 2 and "learning_rate: 'fast' is not valid" in result.stderr and "Traceback" not in result.stderr


def test_auth_sources(tmp_path: Path) -> None:
    assert parse_auth("ann:secret:with:colons", None) == [("ann", "secret:with:colons")]
    logins = tmp_path / "logins"
    logins.write_text("# team\nann:one\n\nbob:two\n")
    assert parse_auth(None, str(logins)) == [("ann", "one"), ("bob", "two")]
    logins.write_text("ann\n")
    with pytest.raises(UsageError, match="line 1: expected user:password"):
        parse_auth(None, str(logins))
    with pytest.raises(UsageError, match="no user:password line"):
        logins.write_text("# nobody\n")
        parse_auth(None, str(logins))
    assert parse_auth(None, None) == []


def test_loopback_detection() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.10")
