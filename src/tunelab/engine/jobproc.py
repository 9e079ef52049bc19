"""The shell of a job process (training, evaluation, export): status.json and events.jsonl kept current, user
errors reported in one line, crashes with their traceback in the job's log, SIGTERM/SIGINT ending it as aborted."""

from __future__ import annotations

import logging
import signal
import sys
import traceback
from collections.abc import Callable
from typing import Any

from tunelab.core.chat_render import TemplateRefusal
from tunelab.core.config import ConfigError
from tunelab.core.datasets import DataError
from tunelab.core.events import EventWriter
from tunelab.core.jobs import JobDir
from tunelab.core.rewards import RewardError
from tunelab.core.rundir import RunDir
from tunelab.core.sources import SourceError
from tunelab.core.templates import UnknownTemplate

log = logging.getLogger("tunelab.job")
USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError, DataError, SourceError, TemplateRefusal, UnknownTemplate, FileNotFoundError, RewardError,
)


class JobAborted(Exception):
    """Raised inside the job when SIGTERM or SIGINT arrives."""


def setup_logging() -> None:
    """INFO to stderr (which the spawner sends to the job's log)."""
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )
    for noisy in ("httpx", "urllib3", "datasets", "filelock", "lm_eval", "lm-eval", "sqlitedict"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _abort(signum: int, frame: Any) -> None:
    raise JobAborted(signal.Signals(signum).name)


def run_job(
    job: JobDir, work: Callable[[JobDir, EventWriter], dict[str, Any]], extra_errors: tuple[type[BaseException], ...] = ()
) -> int:
    """Run ``work`` as the job; returns the exit status (0 succeeded, 1 failed, 130 aborted)."""
    setup_logging()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _abort)
    writer = EventWriter(job.events_file)
    try:
        job.set_status("running")
        writer.write("status", state="running")
        summary = work(job, writer)
    except JobAborted as exc:
        return finish(job, writer, "aborted", f"stopped by {exc}")
    except USER_ERRORS + extra_errors as exc:
        message = str(exc).strip() or type(exc).__name__
        log.error("%s", message)
        return finish(job, writer, "failed", message)
    except Exception as exc:  # a bug or a crash: traceback in the log, a summary in status.json
        traceback.print_exc()
        return finish(job, writer, "failed", f"{type(exc).__name__}: {exc}".strip().splitlines()[0][:500])
    return finish(job, writer, "succeeded", summary.pop("message", f"{job.kind} finished"), **summary)


def reporter(job: RunDir, writer: EventWriter) -> Callable[..., None]:
    """``say(message, stage=None, done=None, total=None, **details)``: a running job's progress, in its log, a
    ``status`` event and status.json (where the studio's tabs read it, even after a page reload)."""

    def say(message: str, stage: str | None = None, **details: Any) -> None:
        log.info("%s", message)
        fields = {"message": message, "stage": stage, "done": None, "total": None, **details}
        writer.write("status", state="running", **fields)
        job.set_status("running", **fields)

    return say


def finish(job: RunDir, writer: EventWriter, state: str, message: str, **fields: Any) -> int:
    """Write the final status event and status.json; return the exit status."""
    code = {"succeeded": 0, "failed": 1, "aborted": 130}[state]
    writer.write("status", state=state, message=message)
    key = "error" if state == "failed" else "message"
    job.set_status(state, **{key: message}, exit_code=code, **fields)
    log.info("%s %s: %s (%s)", getattr(job, "kind", "run"), job.run_id, state, message)
    return code
