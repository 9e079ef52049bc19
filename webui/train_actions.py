"""What the Train tab's events do: validate and preview the form, start and stop jobs, and the live view.

Every handler takes the page's language first, so messages follow the language switch without a reload.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path
from typing import Any

from tunelab.core.config import ConfigError
from tunelab.core.datasets import DataError, load_dataset_registry
from tunelab.core.media import load_image
from tunelab.core.rundir import FINAL_STATES, RunDir, create_run
from tunelab.core.templates import UnknownTemplate, registry
from tunelab.webui import charts, form, live, preview
from tunelab.webui.studio import Studio

STATES = ("queued", "running", "stopping", "succeeded", "failed", "aborted", "unknown")
LIVE_OUTPUTS = 9  # state, status, progress, loss plot, lr plot, speed plot, log, metric plot, metric picker
SERIES_COLORS = ("#a9c7ee", "#1f5fbf", "#e4572e")  # loss, smoothed loss, eval loss
ALWAYS_PLOTTED = ("loss", "lr", "tokens_per_s", "eval_loss")  # these have charts of their own


def model_choices() -> list[str]:
    """The embedded demo models ('demo', then the vision-language 'demo-vlm') first, then every catalog model id."""
    return [*preview.DEMO_MODELS, *sorted({hit.entry.id for hit in registry().catalog.values()}, key=str.lower)]


def template_choices(model: str) -> tuple[list[tuple[str, str]], str]:
    """Template dropdown choices ('auto' labelled with what it resolves to) and the reason."""
    try:
        choice = preview.resolve_template("auto", model or "demo")
        auto, reason = f"auto → {choice.name}", choice.reason
    except Exception as exc:  # a broken model folder must not break the form
        auto, reason = "auto", str(exc)
    return [(auto, "auto"), *[(name, name) for name in registry().names()]], reason


def dataset_choices(stage: str | None = None) -> list[tuple[str, str]]:
    """(label, name) per registered dataset (only those whose format the stage trains on, when one is given)."""
    from tunelab.core.stages import STAGES

    try:
        specs = load_dataset_registry().specs
    except DataError:
        return []
    formats = STAGES[stage].formats if stage in STAGES else None
    return [(f"{name} ({spec.format}{', hub' if spec.hub else ''})", name) for name, spec in specs.items()
            if formats is None or spec.format in formats]


def reattach(studio: Studio) -> str | None:
    """The run a freshly opened page should watch: the newest queued/running training, else the newest run."""
    active = [job for job in studio.services["jobs"].jobs(("running", "queued")) if job.kind is None]  # no eval/export/hold
    if active:
        return active[-1].run_dir
    runs = studio.services["history"].runs()
    return str(runs[0].path) if runs else None


def default_metrics(run: RunDir, choices: list[str]) -> list[str]:
    """The stage's headline metrics the run reports (grad_norm for stages without any)."""
    from tunelab.core.stages import STAGES

    try:
        stage = run.config().stage
    except Exception:  # a run directory without a readable config still plots
        stage = "sft"
    wanted = [m for m in STAGES[stage].metrics if m in choices] if stage in STAGES else []
    return wanted or [n for n in ("grad_norm",) if n in choices] or choices[:1]


def config_file(text: str) -> str:
    """Write a config to a temp file named by its content (for the Save button)."""
    folder = Path(tempfile.gettempdir()) / "tunelab-configs"
    folder.mkdir(exist_ok=True)
    path = folder / f"config-{hashlib.sha256(text.encode()).hexdigest()[:10]}.yaml"
    if not path.exists():
        path.write_text(text, encoding="utf-8")
    return str(path)


def _said(key: str, before: str = "", after: str = "") -> dict[str, str]:
    """A message of the Train tab as data: a translated string between two untranslated parts (run ids)."""
    return {"before": before, "key": key, "after": after}


class TrainActions:
    """The Train tab's event handlers over one studio and the form's field specs."""

    def __init__(self, studio: Studio, specs: list[form.FieldSpec]):
        self.studio, self.specs = studio, specs

    def text(self, key: str, lang: str) -> str:
        """A string of the translations table."""
        return self.studio.translations.text(key, lang)

    def invalid(self, lang: str, error: Any) -> str:
        """The 'Not started: <schema message>' line shown next to the form."""
        return f"**{self.text('train.invalid', lang)}:** {error}"

    def mapping(self, values: tuple, strict: bool = True) -> dict[str, Any]:
        """(model_path, *field values) -> config mapping; a filled-in path replaces the model dropdown.
        ConfigError when a number field holds no number (``strict=False``: such fields are left out)."""
        path, rest = values[0], list(values[1:])
        mapping = form.form_to_mapping(self.specs, rest, strict)
        if isinstance(path, str) and path.strip():
            mapping["model"] = path.strip()
        return mapping

    def check(self, values: tuple) -> tuple[Any, str]:
        """(config, '') when the form is valid, else (None, one line per problem, each naming its field)."""
        try:
            mapping = self.mapping(values)
        except ConfigError as exc:
            return None, str(exc)
        return form.validate(mapping)

    def on_form(self, lang: str, *values: Any) -> tuple:
        """YAML preview, command preview, validation message, config file to save."""
        config, error = self.check(values)
        if config is None:
            return "", "", self.invalid(lang, error), None
        text = form.yaml_preview(config)
        return text, form.command_preview(config), "", config_file(text)

    def on_preview(self, lang: str, *values: Any) -> tuple:
        """Template choices (auto labelled), what auto resolves to, highlighted examples and a note."""
        import gradio as gr

        mapping = self.mapping(values, strict=False)
        model = mapping.get("model") or "demo"
        choices, reason = template_choices(model)
        label = self.text("train.trained", lang)
        labels = {kind: self.text(f"train.{kind}", lang) for kind in ("chosen", "rejected", "desirable", "undesirable", "generated")}
        result = preview.render_examples(
            model=model, template=mapping.get("template") or "auto", stage=mapping.get("stage") or "sft",
            datasets=mapping.get("dataset") or [], dataset_dir=mapping.get("dataset_dir"),
            train_on_prompt=bool(mapping.get("train_on_prompt")), mask_history=bool(mapping.get("mask_history")),
            system_prompt=mapping.get("system_prompt"), label=label, labels=labels,
        )
        info = f"{self.text('train.auto_is', lang)} **{choices[0][0].removeprefix('auto → ')}** — {reason}"
        colors = {label: "green", labels["chosen"]: "green", labels["desirable"]: "green", labels["rejected"]: "red",
                  labels["undesirable"]: "red"}
        pictures = [(load_image(ref), caption) for ref, caption in result.images]  # PIL: gradio serves its own copies
        return (gr.update(choices=choices), info, gr.update(value=result.segments, color_map=colors), result.note,
                gr.update(value=pictures or None, visible=bool(pictures)))

    def on_estimate(self, lang: str, device: str | None, path: str | None, *values: Any) -> str:
        """The estimate box for the form as it stands, on the picked device (waiting while Start would refuse it)."""
        from tunelab.webui.estimate_view import form_estimate

        config, _ = self.check((path, *values))
        return form_estimate(lambda key: self.text(key, lang), device, config, self.studio.services["jobs"].gpus)

    def on_start(self, lang: str, devices: list[str], *values: Any) -> tuple:
        """Validate, create the run directory, queue it; the page then watches it."""
        import gradio as gr

        from tunelab.cli.train import preflight

        jobs = self.studio.services["jobs"]
        config, error = self.check(values)
        try:
            if config is None:
                raise ConfigError(error)
            preflight(config)
            jobs.check_request(list(devices or []), processes=config.nproc_per_node)  # several GPUs: one per process
        except (ConfigError, DataError, UnknownTemplate, ValueError) as exc:
            return self.invalid(lang, exc), gr.skip(), gr.skip(), gr.skip()
        run = create_run(config, self.studio.runs_dir)
        jobs.submit(run, devices=list(devices or []))
        jobs.poll()
        job = jobs.job_for(run.path)
        if job is not None and job.state == "queued":  # say what it waits for: the jobs (or chat model) holding its GPUs
            said = _said("train.queued_behind", after=f": `{run.run_id}` — {jobs.waiting_reason(job)}")
        else:
            said = _said("train.started", after=f": `{run.run_id}`")
        return "", {"run": str(run.path)}, {"said": said}, self.said(lang, {"said": said})

    def on_stop(self, lang: str, state: dict) -> tuple:
        """Stop the watched run (dequeue it, or signal its process group); returns (message, drawn, said)."""
        import gradio as gr

        path = (state or {}).get("run") or reattach(self.studio)  # none picked: the run the live view shows
        if not path:
            said = _said("train.nothing_to_stop")
            return self.said(lang, {"said": said}), gr.skip(), {"said": said}
        outcome = self.studio.services["jobs"].stop(path)
        message = {"stopping": "train.stopping", "dequeued": "train.dequeued"}.get(outcome, "train.nothing_to_stop")
        said = _said(message, before=f"`{RunDir(path).run_id}`: ")
        # forget what was drawn: the next tick redraws even if the run ended before this answer arrived
        return self.said(lang, {"said": said}), {"key": None}, {"said": said}

    def said(self, lang: str, state: dict | None) -> Any:
        """What Start or Stop last said (kept in its own state), in ``lang``: re-rendered when the language changes."""
        import gradio as gr

        said = (state or {}).get("said")
        return said["before"] + self.text(said["key"], lang) + said["after"] if said else gr.skip()

    def on_load_file(self, lang: str, file: Any) -> list[Any]:
        """Fill the form from an uploaded YAML config."""
        import gradio as gr

        path = Path(file if isinstance(file, str) else file.name)
        try:
            config = form.load_yaml_config(path.read_text(encoding="utf-8"), path.name)
        except (ConfigError, OSError) as exc:
            return [self.invalid(lang, exc), gr.skip()] + [gr.skip()] * len(self.specs)
        return [f"{self.text('train.loaded', lang)}: `{path.name}`", ""] + form.config_to_values(self.specs, config)

    def on_stage(self, stage: str, datasets: list[str] | None) -> list[Any]:
        """Show the chosen stage's fields only; offer the datasets it can train on (keeping fitting choices)."""
        import gradio as gr

        updates = [gr.update(visible=shown) for shown in form.stage_visibility(self.specs, stage)]
        choices = dataset_choices(stage)
        names = {name for _, name in choices}
        kept = [d for d in (datasets or []) if d in names or d not in {n for _, n in dataset_choices()}]
        index = [s.name for s in self.specs].index("dataset")
        updates[index] = gr.update(choices=choices, value=kept or ([choices[0][1]] if choices else []), visible=True)
        return updates

    def on_page_load(self, lang: str, *values: Any) -> tuple:
        """Fill the previews and reattach the live view."""
        return (*self.on_form(lang, *values), *self.on_preview(lang, *values), {"run": reattach(self.studio)})

    def words(self, lang: str) -> dict[str, str]:
        """The live view's words in ``lang``."""
        words = {k: self.text(f"live.{k}", lang) for k in ("step", "eta", "tokens_per_s", "loss", "preparing", "waiting")}
        words.update({f"state.{s}": self.text(f"state.{s}", lang) for s in STATES})
        words.update({f"prep.{s}": self.text(f"prep.{s}", lang) for s in live.PREPARE_STAGES})
        return words

    def watch(self, state: dict, drawn: dict, weight: float, lang: str, picked: list[str] | None = None) -> tuple:
        """One live-view update for the watched run: (drawn, *views), all gr.skip() when nothing changed. It never
        writes the watched run (``state``): a tick that began before Start answered would undo Start's pick."""
        import gradio as gr

        skip = (gr.skip(),) * LIVE_OUTPUTS
        drawn = drawn or {}
        path = (state or {}).get("run") or reattach(self.studio)  # none picked (yet): a run started elsewhere shows
        if not path:
            if drawn.get("key") != ("none", lang):
                charts = self.charts({}, {}, {}, {}, lang)
                return ({"key": ("none", lang)}, self.text("train.no_run", lang), "", *charts[:3], "",
                        charts[3], gr.update(choices=[], value=[]))
            return skip
        run = RunDir(path)
        metrics = self.studio.services["history"].metrics(run)
        status = run.status()
        run_state = status.get("state", "unknown")
        if run_state not in FINAL_STATES and self.studio.services["jobs"].stopping(run.path):
            run_state = "stopping"
        key = (str(run.path), metrics.version, metrics.log.offset, run_state, weight, lang, tuple(picked or ()))
        if key == drawn.get("key"):
            return skip
        words = self.words(lang)
        waiting = None
        if run_state in ("queued", "running"):
            waiting = f"{words['preparing']}: {live.stage_line(metrics.stage, words)[0]}" if metrics.stage else words["waiting"]
        names = {k: self.text(f"series.{k}", lang) for k in ("loss", "smoothed", "eval_loss")}
        choices = [n for n in live.metric_names(metrics) if n not in ALWAYS_PLOTTED]
        shown = [n for n in picked or [] if n in choices] or default_metrics(run, choices)
        loss, lr, speed, other = self.charts(
            live.loss_series(metrics, weight, names), live.metric_series(metrics, ["lr"]),
            live.metric_series(metrics, ["tokens_per_s"]), live.metric_series(metrics, shown), lang,
            waiting=waiting,
        )
        return (
            {"key": key, "metrics": choices}, self.headline(run, status, run_state, words, lang),
            live.progress_html(metrics, run_state, words), loss, lr, speed, metrics.log.text(60), other,
            gr.update(choices=choices) if choices != drawn.get("metrics") else gr.skip(),
        )

    def charts(self, loss: dict, lr: dict, speed: dict, other: dict, lang: str, waiting: str | None = None) -> tuple:
        """The four live charts as SVG (an empty one says why it is empty)."""
        empty = waiting or self.text("live.no_points", lang)
        colors = dict(zip((self.text(f"series.{k}", lang) for k in ("loss", "smoothed", "eval_loss")), SERIES_COLORS))
        return (
            charts.line_chart(loss, self.text("train.loss_plot", lang), colors=colors, empty=empty),
            charts.line_chart(lr, self.text("train.lr_plot", lang), empty=empty, small=True),
            charts.line_chart(speed, self.text("train.speed_plot", lang), empty=empty, small=True),
            charts.line_chart(other, self.text("train.metric_plot", lang), empty=empty),
        )

    def headline(self, run: RunDir, status: dict, run_state: str, words: dict[str, str], lang: str) -> str:
        """'Run <id> — running · GPU 0' plus the run's last message."""
        devices = status.get("devices")
        where = f" · GPU {','.join(devices)}" if devices else ""
        state_text = words.get(f"state.{run_state}", run_state)
        text = f"**{self.text('train.watching', lang)}** `{run.run_id}` — **{state_text}**{where}"
        message = status.get("error") or status.get("message") or ""
        return f"{text}\n\n{message}" if message else text
