"""What the Evaluate and Export tabs share: the runs they offer (kept current as runs finish or are deleted), the
running job a freshly loaded page reattaches to, and that job's progress line in the page's language.

Jobs write their step (``stage``, ``side``, ``done``/``total``) to status.json (engine.jobproc.reporter); these
functions only read files, so a reload, a second page or a restarted studio shows the same progress.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunelab.core.jobs import JobDir
from tunelab.core.rundir import list_runs
from tunelab.webui.studio import Studio

BAR = 12  # characters of the text progress bar
STARTING = {"eval": "eval.running", "export": "export.starting"}  # before a job names its first step
TICK_S = 1.0  # how often a page follows its job and its run list
# what a finished job shows: (studio, job, status, lang) -> one output's value, or a tuple of them
Outcome = Callable[[Studio, JobDir, dict[str, Any], str], Any]


def finished_runs(runs_dir: Path) -> list[tuple[str, str]]:
    """(label, path) of runs that saved an adapter or a model, newest first."""
    return [(f"{run.run_id} ({run.status().get('state', '?')})", str(run.path))
            for run in list_runs(runs_dir) if run.final_weights() is not None]


def refresh_choices(runs_dir: Path, current: str | None) -> Any:
    """The run dropdown with the finished runs now (the current choice kept, else the newest)."""
    import gradio as gr

    choices = finished_runs(runs_dir)
    return gr.update(choices=choices, value=current or (choices[0][1] if choices else None))


def run_choices_update(runs_dir: Path, current: str | None, seen: Any) -> tuple[Any, Any]:
    """(dropdown update, new signature) when the finished runs changed since ``seen``; (skip, skip) otherwise.
    The choice is kept, a typed path included; it falls back to the newest run only when empty or when it was a
    listed run that went (before the first tick, where nothing was listed yet: a path that no longer exists)."""
    import gradio as gr

    choices = finished_runs(runs_dir)
    signature = [list(c) for c in choices]
    if signature == seen:
        return gr.skip(), gr.skip()
    paths = [path for _, path in choices]
    if seen is None:
        gone = bool(current) and current not in paths and not Path(current).expanduser().exists()
    else:
        gone = current in {path for _, path in seen} and current not in paths
    keep = current if current and not gone else (paths[0] if paths else None)
    return gr.update(choices=choices, value=keep), signature


def active_job(runs_dir: Path, kind: str) -> JobDir | None:
    """The newest queued or running job of ``kind`` (of any run, or of a bare model) for a page to reattach to."""
    from tunelab.services.model_jobs import is_final, job_state, jobs_of

    candidates = [job for run in list_runs(runs_dir) for job in jobs_of(kind, run.path)[:2]]
    candidates += jobs_of(kind, None, runs_dir)[:2]
    for job in sorted(candidates, key=lambda j: j.path.name, reverse=True):
        if not is_final(job_state(job)):
            return job
    return None


def bar(done: Any, total: Any) -> str:
    """'▰▰▰▱▱▱ 3/6' ('' without a count)."""
    if not isinstance(done, int) or not isinstance(total, int) or total <= 0:
        return ""
    filled = round(BAR * min(done / total, 1.0))
    return f" {'▰' * filled}{'▱' * (BAR - filled)} {done}/{total}"


def progress_line(studio: Studio, lang: str, kind: str, job: JobDir, status: dict[str, Any]) -> str:
    """'⏳ base: generating replies ▰▰▱▱ 2/6 (`job-id`)' in ``lang``: the job's stage, translated, with its count."""
    t = studio.translations
    stage = status.get("stage")
    key = f"{kind}.stage.{stage}"
    side = status.get("side")
    words = {"side": t.text(f"eval.col.{side}", lang) if side else ""}
    if stage and key in t.table:
        text = t.text(key, lang).format(**words)
    else:
        text = t.text(f"{kind}.queued" if status.get("state") == "queued" else STARTING[kind], lang)
    return f"⏳ {text}{bar(status.get('done'), status.get('total'))} (`{job.run_id}`)"


def language_of(studio: Studio) -> Any:
    """The page's language component (a fixed State where a tab is built without the studio's header)."""
    import gradio as gr

    return studio.components.get("language") or gr.State(studio.lang)


def follow_job(studio: Studio, kind: str, watched: dict[str, Any], lang: str, outcome: Outcome, width: int) -> tuple:
    """One tick of a reattached page: (watched, *``width`` outputs): the watched job's progress line (in the first
    output), then ``outcome(studio, job, status, lang)`` once it ends; all skips while nothing changed."""
    import gradio as gr

    from tunelab.services.model_jobs import is_final, job_state

    skip = (gr.skip(),) * (width + 1)
    if not watched or not watched.get("job"):
        return skip
    job = JobDir(watched["job"], kind)
    status = job_state(job)
    key = [status.get("state"), status.get("updated_at"), lang]
    if key == watched.get("key"):
        return skip
    if is_final(status):
        shown = outcome(studio, job, status, lang)
        return ({"job": None, "key": None}, *(shown if isinstance(shown, tuple) else (shown,)))
    return ({**watched, "key": key}, progress_line(studio, lang, kind, job, status), *skip[2:])


def follow_jobs(studio: Studio, kind: str, run: Any, outputs: list[Any], outcome: Outcome) -> None:
    """Every TICK_S: the progress, then the outcome, of the job of ``kind`` a (re)loaded page reattached to (the
    newest running one) in ``outputs`` (see follow_job), and the ``run`` dropdown's choices kept current as runs
    finish or go."""
    import gradio as gr

    watched, seen = gr.State({"job": None, "key": None}), gr.State(None)
    quiet: dict[str, Any] = dict(show_progress="hidden", api_visibility="private")
    timer = gr.Timer(TICK_S)
    timer.tick(lambda state, lang: follow_job(studio, kind, state, lang, outcome, len(outputs)),
               [watched, language_of(studio)], [watched, *outputs], **quiet)
    timer.tick(lambda current, last: run_choices_update(studio.runs_dir, current, last), [run, seen], [run, seen], **quiet)
    root = gr.context.Context.root_block
    if root is not None:
        root.load(lambda: reattach(studio.runs_dir, kind), None, watched, **quiet)


def reattach(runs_dir: Path, kind: str) -> dict[str, Any]:
    """The watched-job state of a freshly loaded page: the running job of ``kind``, if any."""
    job = active_job(runs_dir, kind)
    return {"job": str(job.path) if job else None, "key": None}
