"""What the Data tab's events do: guess an uploaded file's format, save it to the user's registry, rename and delete
entries, preview rows raw and rendered, and check every row with the token-length histogram.

The logic is the CLI's (tunelab.services.data_registry, tunelab.services.datacheck); this module only turns its
results and its one-line refusals into components. Every handler takes the page's language first.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tunelab.core.datacheck import histogram_bins, length_summary
from tunelab.core.datasets import DataError, load_dataset_registry
from tunelab.webui import charts, preview
from tunelab.webui.studio import Studio

RAW_ROWS = 3
CHECK_TIMEOUT_S = 600


def dataset_options() -> list[tuple[str, str]]:
    """(label, name) of every registered dataset, shipped and the user's."""
    try:
        datasets = load_dataset_registry()
    except DataError:
        return []
    return [(f"{name} ({spec.format}{', yours' if name in datasets.user else ''})", name)
            for name, spec in sorted(datasets.specs.items())]


def train_datasets(stage: str | None, picked: list[str] | None) -> Any:
    """The Train tab's dataset dropdown with the registry as it is now: picks that are still registered names (for
    ``stage``) and typed paths that exist are kept; renamed or deleted names go."""
    import gradio as gr

    from tunelab.webui.train_actions import dataset_choices

    choices = dataset_choices(stage)
    names = {name for _, name in choices}
    return gr.update(choices=choices, value=[d for d in picked or [] if d in names or Path(d).expanduser().exists()])


def columns_text(columns: dict[str, str]) -> str:
    """A column mapping as KEY=COLUMN lines."""
    return "\n".join(f"{key}={column}" for key, column in columns.items())


class DataActions:
    """The Data tab's event handlers over one studio."""

    def __init__(self, studio: Studio):
        self.studio = studio

    def text(self, key: str, lang: str) -> str:
        """A string of the translations table."""
        return self.studio.translations.text(key, lang)

    def refused(self, lang: str, exc: Exception) -> str:
        """'Refused: <one line>' as Markdown."""
        return f"❌ **{self.text('data.failed', lang)}:** {exc}"

    def picker(self, value: str | None = None) -> Any:
        """The registered-datasets dropdowns refreshed (keeping ``value`` picked)."""
        import gradio as gr

        return gr.update(choices=dataset_options(), value=value)

    def validation_picker(self, validation: str | None, renamed: tuple[str | None, str] | None = None) -> Any:
        """The validation dropdown refreshed: new choices only while its pick still exists (a renamed pick follows
        ``renamed`` = (old, new)), else cleared."""
        import gradio as gr

        options = dataset_options()
        if renamed and validation and validation == renamed[0]:
            return gr.update(choices=options, value=renamed[1])
        if validation and validation in {name for _, name in options}:
            return gr.update(choices=options)
        return gr.update(choices=options, value=None)

    def on_upload(self, lang: str, file: Any) -> tuple:
        """An uploaded file: remember it and guess how to read it."""
        if not file:
            return None, "", "", None, ""
        path = Path(file if isinstance(file, str) else file.name)
        return ({"path": str(path), "name": path.name}, *self._guess(lang, str(path)))

    def on_inspect(self, lang: str, text: str) -> tuple:
        """A typed path or hub id: forget any upload and guess how to read it."""
        return (None, *self._guess(lang, text))

    def _guess(self, lang: str, text: str) -> tuple:
        """(guess note, name, format, columns) for a file, folder or hub id."""
        import gradio as gr

        from tunelab.services.data_registry import inspect_source

        try:
            source = inspect_source(text)
        except DataError as exc:
            return self.refused(lang, exc), gr.skip(), gr.skip(), gr.skip()
        guess = source.guess
        seen = ", ".join(f"`{c}`" for c in source.columns)
        note = (f"**{self.text('data.guessed', lang)}:** format **{guess.format}** — {guess.reason()}"
                + (f"  \n{self.text('data.columns_seen', lang)}: {seen}" if seen else ""))
        return note, source.default_name(), guess.format, columns_text(guess.columns)

    def on_save(self, lang: str, upload: dict | None, text: str, name: str, fmt: str | None, columns: str,
                description: str, validation: str | None = None) -> tuple:
        """Save the dataset to the user's registry; the pickers then offer it (``validation``: the validation pick)."""
        import gradio as gr

        from tunelab.services.data_registry import parse_columns, register

        try:
            source, upload_name = (upload["path"], upload["name"]) if upload else (text, None)
            saved, note = register((name or "").strip(), source, fmt or None, parse_columns(columns), description or "",
                                   upload_name=upload_name)
        except DataError as exc:
            return self.refused(lang, exc), gr.skip(), gr.skip()
        return (f"✅ **{self.text('data.saved', lang)}:** `{saved}` — {note}", self.picker(saved),
                self.validation_picker(validation))

    def on_rename(self, lang: str, old: str | None, new: str, validation: str | None = None) -> tuple:
        """Rename one of the user's datasets (the validation pick follows it)."""
        import gradio as gr

        from tunelab.core.user_datasets import rename_entry

        try:
            rename_entry(old or "", (new or "").strip())
        except DataError as exc:
            return self.refused(lang, exc), gr.skip(), gr.skip()
        return (f"✅ **{self.text('data.renamed', lang)}:** `{old}` → `{new.strip()}`", self.picker(new.strip()),
                self.validation_picker(validation, (old, new.strip())))

    def on_delete(self, lang: str, name: str | None, validation: str | None = None) -> tuple:
        """Delete one of the user's datasets (the validation pick is kept unless it was this one)."""
        import gradio as gr

        from tunelab.core.user_datasets import remove_entry

        try:
            remove_entry(name or "")
        except DataError as exc:
            return self.refused(lang, exc), gr.skip(), gr.skip()
        return f"✅ **{self.text('data.deleted', lang)}:** `{name}`", self.picker(), self.validation_picker(validation)

    def on_pick(self, lang: str, name: str | None, model: str, template: str) -> tuple:
        """Where a dataset comes from, its first rows raw, and rendered with the loss-carrying text highlighted."""
        import gradio as gr

        from tunelab.services.data_registry import show_rows

        if not name:
            return self.text("data.pick_first", lang), "", "", gr.update(value=[]), ""
        try:
            spec, rows = show_rows(name, RAW_ROWS)
        except DataError as exc:
            return self.refused(lang, exc), "", "", gr.update(value=[]), ""
        registry = load_dataset_registry()
        origin = self.text("data.yours" if name in registry.user else "data.shipped", lang)
        info = f"`{name}`: format **{spec.format}**, `{spec.file or 'hub:' + str(spec.hub)}` ({origin})"
        if spec.columns:
            info += f", columns {', '.join(f'{k} ← `{v}`' for k, v in spec.columns.items())}"
        if not rows:
            return info, name, self.text("data.hub_rows", lang), gr.update(value=[]), ""
        raw = json.dumps(rows, ensure_ascii=False, indent=1, default=str)
        label = self.text("train.trained", lang)
        labels = {kind: self.text(f"train.{kind}", lang) for kind in ("chosen", "rejected", "desirable", "undesirable", "generated")}
        result = preview.render_examples(model=model or "demo", template=template or "auto", datasets=[name],
                                         stage="pt" if spec.format == "text" else "sft", label=label, labels=labels)
        drawn = {kind for _, kind in result.segments if kind}
        colors = {kind: "red" if kind in (labels["rejected"], labels["undesirable"]) else "green" for kind in drawn}
        return info, name, raw, gr.update(value=result.segments, color_map=colors), result.note

    def on_check(self, lang: str, name: str | None, model: str, template: str, cutoff: Any, validation: str | None) -> tuple:
        """The check report (Markdown) and the token-length histogram with the cutoff line (SVG)."""
        if not name:
            return self.text("data.pick_first", lang), ""
        try:
            if cutoff is None or int(cutoff) != cutoff:
                raise DataError(f"cutoff: {cutoff!r} is not a whole number of tokens")
            found = run_check(name, (model or "").strip(), template or "auto", int(cutoff), validation)
        except DataError as exc:
            return self.refused(lang, exc), ""
        title = f"{self.text('data.histogram', lang)} — {length_summary(found['lengths'])}"
        chart = charts.histogram_chart(histogram_bins(found["lengths"], found["cutoff"]), found["cutoff"], title,
                                       x_label=self.text("data.tokens", lang)) if found["measured_with"] else ""
        return _report_markdown(found), chart


def run_check(name: str, model: str, template: str, cutoff: int, validation: str | None) -> dict[str, Any]:
    """`tunelab data check --json` as a subprocess (the tokenizer brings torch, which the studio never imports);
    its findings, or DataError with its one-line refusal."""
    argv = [sys.executable, "-m", "tunelab.cli", "data", "check", name, "--template", template, "--cutoff", str(cutoff), "--json"]
    argv += ["--model", model] if model else []
    argv += ["--validation", validation] if validation else []
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=CHECK_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise DataError(f"the check of {name!r} took more than {CHECK_TIMEOUT_S} s and was stopped; "
                        f"run `tunelab data check {name}` in a terminal to see it through") from None
    try:
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        raise DataError((lines[-1] if lines else f"the check exited with status {done.returncode}").removeprefix("tunelab: ")) from None


def _report_markdown(found: dict[str, Any]) -> str:
    """A check's findings as Markdown: the malformed rows first, then the counts (the lines the CLI prints)."""
    lines = [f"{'✅' if found['ok'] else '❌'} {found['lines'][0]}"]
    lines += [f"- {problem}" for problem in found["problems"]]
    if found["more_problems"]:
        lines.append(f"- … {found['more_problems']} more")
    lines += [f"- {line.strip()}" for line in found["lines"][1:]]
    return "\n".join(lines)
