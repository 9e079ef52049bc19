"""Property test of the Train form over a real Gradio server, driven through gradio_client: whatever is typed
into a number field or sent for a choice field is either refused with a message naming that field (and no run
directory appears), or it reaches the run's config.yaml exactly as typed. Never replaced by a default.

The trainer launch is replaced by a `sleep` in its own process group (the job queue's launcher hook): this test
is about the form and the run directory it writes, not about training, and a real trainer per example would
cost ~10 s of CPU each.
"""

from __future__ import annotations

import math
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tunelab.core.config import ConfigError, RunConfig, stage_fields
from tunelab.core.rundir import RunDir
from tunelab.webui import app, form

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

pytestmark = pytest.mark.timeout(600)

SPECS = form.field_specs()
INDEX = {s.name: i for i, s in enumerate(SPECS)}
SFT = set(stage_fields("sft"))
NUMBER_FIELDS = [s.name for s in SPECS if s.kind in ("int", "float") and s.name in SFT]
CHOICE_FIELDS = [s.name for s in SPECS if s.kind == "choice" and s.name != "stage"]

typed_numbers = st.one_of(
    st.sampled_from(["", " ", "abc", "1e400", "-1e400", "nan", "inf", "-inf", "0", "-1", "-0", "1e-4", " 7 ", "3.5",
                     "1,5", "0x10", "2e1", "1_000", "١٢", "++1", "12abc", "9" * 30]),
    st.text(alphabet="0123456789.-+eE abc", max_size=8),
    st.integers(min_value=-10**6, max_value=10**6).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
)


def _sleeper(run: RunDir, env: dict[str, str]) -> subprocess.Popen:
    """Stand-in trainer: a process group that only waits (see the module docstring)."""
    return subprocess.Popen(["sleep", "300"], start_new_session=True, stdin=subprocess.DEVNULL)


def _expected(name: str, typed: str) -> Any:
    """What the field must hold if the form accepts ``typed`` (an independent reading of the text)."""
    spec, text = SPECS[INDEX[name]], typed.strip()
    if not text:
        return None
    if spec.kind == "float":
        return float(text)
    try:
        return int(text)
    except ValueError:
        number = float(text)
        if not number.is_integer():
            raise ValueError(f"{typed!r} is not whole") from None
        return int(number)


def _schema_accepts(name: str, value: Any) -> bool:
    """Whether RunConfig itself takes this value for the field (finite numbers only)."""
    if isinstance(value, float) and not math.isfinite(value):
        return False
    try:
        RunConfig(**{name: value})
    except (ValueError, ConfigError):
        return False
    return True


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    studio = app.make_studio(runs, start_jobs=False)
    studio.services["jobs"].launcher = _sleeper
    blocks = app.build_app(studio)
    blocks.queue().launch(prevent_thread_lock=True, ssr_mode=False, quiet=True)
    from gradio_client import Client

    try:
        yield Served(Client(blocks.local_url, verbose=False), studio)
    finally:
        for job in studio.services["jobs"].jobs(("running", "queued")):
            studio.services["jobs"].stop(job.run_dir)
        blocks.close()


class Served(tuple):
    """(client, studio) with a short repr (hypothesis prints the arguments of a failing example)."""

    def __new__(cls, client: Any, studio: Any) -> "Served":
        return super().__new__(cls, (client, studio))

    def __repr__(self) -> str:
        return "served"


def _runs(studio) -> set[Path]:
    return {p.parent for p in studio.runs_dir.glob("*/config.yaml")}


def _submit(client, studio, values: list[Any]) -> tuple[str, str, set[Path]]:
    """(check_form's message, start's message, the run directories Start created)."""
    before = _runs(studio)
    *_, checked, _ = client.predict("en", "", *values, api_name="/check_form")
    started, _ = client.predict("en", [], "", *values, api_name="/start")
    return checked, started, _runs(studio) - before


@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(NUMBER_FIELDS), typed=typed_numbers)
def test_a_typed_number_is_refused_naming_the_field_or_kept_exactly(served, name: str, typed: str) -> None:
    client, studio = served
    values = form.config_to_values(SPECS, RunConfig())
    values[INDEX[name]] = typed
    checked, started, new = _submit(client, studio, values)
    try:
        expected = _expected(name, typed)
        readable = expected is not None or SPECS[INDEX[name]].optional
    except (ValueError, OverflowError):
        expected, readable = None, False
    if checked:
        assert name in form.bad_fields(checked), (typed, checked)
        assert name in started and not new, (typed, started, new)  # refused at Start too; nothing created
        assert not (readable and _schema_accepts(name, expected)), f"{name}={typed!r} is valid but was refused: {checked}"
        return
    assert len(new) == 1, (typed, started, new)
    [run_dir] = new
    assert readable, f"{name}={typed!r} is not a number but was accepted"
    assert getattr(RunDir(run_dir).config(), name) == expected, (typed, (run_dir / "config.yaml").read_text())
    studio.services["jobs"].stop(run_dir)


@settings(max_examples=8, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(CHOICE_FIELDS), typed=st.text(min_size=1, max_size=12))
def test_an_unknown_choice_is_refused(served, name: str, typed: str) -> None:
    client, studio = served
    spec = SPECS[INDEX[name]]
    hypothesis.assume(typed not in spec.choices)
    values = form.config_to_values(SPECS, RunConfig())
    values[INDEX[name]] = typed
    before = _runs(studio)
    try:
        checked, started, new = _submit(client, studio, values)
    except Exception as exc:  # gradio's dropdown refuses a value outside its choices before our handler runs
        assert "not in the list of choices" in str(exc), exc
        assert _runs(studio) == before
        return
    assert name in form.bad_fields(checked) and name in started and not new, (typed, checked, started)
