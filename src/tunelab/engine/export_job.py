"""The export job process: JOB_DIR/export.yaml in; status.json, events.jsonl and results.json (the report) out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunelab.core.events import EventWriter
from tunelab.core.export_config import validate_export_config
from tunelab.core.files import write_json_atomic
from tunelab.core.jobs import JobDir
from tunelab.engine.jobproc import reporter
from tunelab.engine.jobproc import run_job as _run_job


def _work(job: JobDir, writer: EventWriter) -> dict[str, Any]:
    from tunelab.engine.export import export_model

    cfg = validate_export_config(job.options(), str(job.config_file))
    report = export_model(cfg, reporter(job, writer))
    write_json_atomic(job.results_file, report)
    verify = report.get("verify") or {}
    return {"message": f"exported to {report['out']}" + (f"; {verify['summary']}" if verify else ""), "out": report["out"]}


def run_job(job_dir: str | Path) -> int:
    """Run the export job in ``job_dir``."""
    from tunelab.engine.export import ExportError
    from tunelab.engine.gguf import GgufUnsupported

    return _run_job(JobDir(job_dir, "export"), _work, (ExportError, GgufUnsupported))
