"""The Train tab's estimate box (updates with the form) and the Runs tab's estimate-vs-measured line.

Pure formatting and the call into tunelab.services.estimate; the tabs only lay the components out and wire them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tunelab.core.config import ConfigError, RunConfig
from tunelab.core.datasets import DataError
from tunelab.core.estimate import Estimate
from tunelab.core.gpus import class_names

Text = Callable[[str], str]


def device_choices(gpus: list[Any]) -> list[tuple[str, str]]:
    """The estimate's device picker: the GPUs found here (by index), then every class of the GPU table."""
    return [(g.label, g.index) for g in gpus] + [(name, name) for name in class_names()]


def default_device(gpus: list[Any]) -> str:
    """GPU 0 when there is one, else the CPU (where Start would train); a GPU class can be picked to plan for."""
    return gpus[0].index if gpus else "CPU"


def render(est: Estimate, text: Text) -> str:
    """The box: one headline, the verdict (a warning when it will not or may not fit), details and hints."""
    head = f"**{text('estimate.title')}:** {est.line()}"
    if not est.fits:
        verdict = f"⚠️ **{text('estimate.no_fit')}** — {est.verdict()}"
    elif est.tight:
        verdict = f"⚠️ **{text('estimate.tight')}** — {est.verdict()}"
    else:
        verdict = est.verdict()
    details = (f"{text('estimate.path')}: `{est.path}` · {est.allocated_gib:.1f} GiB {text('estimate.allocated')} · "
               f"{text('estimate.data')}: {est.data_source}")
    lines = [head, verdict, details]
    if est.hints:
        lines.append(f"{text('estimate.hints')}: " + "; ".join(f"`{h}`" for h in est.hints))
    lines.extend(f"*{note}*" for note in est.notes)
    return "\n\n".join(lines)


def form_estimate(text: Text, device: str | None, config: RunConfig | None, gpus: list[Any]) -> str:
    """The box for the form's config on ``device`` (an index of ``gpus``, the GPUs here, or a GPU class);
    a waiting line while the form is not a valid config (``config`` None: what Start would refuse)."""
    from tunelab.services.estimate import device_for, estimate_config

    if config is None:
        return f"*{text('estimate.waiting')}*"
    try:
        return render(estimate_config(config, device_for(device or "auto", gpus)), text)
    except (ConfigError, DataError) as exc:
        return f"*{text('estimate.none')}: {exc}*"


def compare_line(status: dict[str, Any], last: dict[str, Any], final: bool, text: Text) -> str:
    """'Estimate vs measured: 18.9 vs 18.9 GiB reserved (+0%), 9,464 vs 9,807 tok/s (-3%)' for a run."""
    est = status.get("estimate")
    if not est:
        return f"*{text('estimate.no_record')}*"
    measured_gib, rate = last.get("peak_reserved_gb"), last.get("tokens_per_s_avg")
    parts = []
    if measured_gib:
        parts.append(f"{est['reserved_gib']:.1f} vs {measured_gib:.1f} GiB {text('estimate.reserved')} "
                     f"({est['reserved_gib'] / measured_gib - 1:+.0%})")
    elif est.get("device") == "CPU":
        parts.append(f"{text('estimate.cpu_run')} (~{est['needed_gib']:.1f} GiB RAM)")
    if rate:
        parts.append(f"{est['tokens_per_s']:,.0f} vs {rate:,.0f} tok/s ({est['tokens_per_s'] / rate - 1:+.0%})")
    if not parts:
        return f"**{text('estimate.vs_measured')}:** {text('estimate.nothing_measured')}"
    so_far = "" if final else f" ({text('estimate.so_far')})"
    return f"**{text('estimate.vs_measured')}{so_far}:** " + ", ".join(parts) + f" · {est.get('device', '')}"

