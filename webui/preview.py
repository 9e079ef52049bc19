"""What the Train tab shows before anything starts: which template 'auto' picks, and a few examples rendered
through it with the loss-carrying text marked. Pure Python: the template's own ``{% generation %}`` spans
give the trained characters, so no tokenizer (and no torch) is needed."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path

from tunelab.core.chat_render import TemplateRefusal
from tunelab.core.datasets import DataError, iter_rows, load_dataset_registry
from tunelab.core.media import convert_media_row
from tunelab.core.template_choice import TemplateChoice, choose_template
from tunelab.core.templates import UnknownTemplate, registry

DEMO_MODEL = "demo"
DEMO_MODELS = ("demo", "demo-vlm")  # the embedded models (the VLM's language model is the text demo)
DEMO_TEMPLATE = "chatml"  # the embedded demo models are built with the registry's chatml template
PREVIEW_ROWS = 3


@dataclass
class Preview:
    """Highlighted segments ((text, label or None) pairs), a one-line note, and the shown examples' pictures as
    (image ref, caption) pairs."""

    segments: list[tuple[str, str | None]]
    note: str = ""
    images: list[tuple[str, str]] = field(default_factory=list)


def model_folder(model: str) -> Path | None:
    """The local folder of a model reference ('demo' -> the built demo model, if built)."""
    if model in DEMO_MODELS:
        from tunelab.engine.demo import demo_model_dir  # these import no torch
        from tunelab.engine.vlm_demo import demo_vlm_dir

        folder = demo_model_dir() if model == DEMO_MODEL else demo_vlm_dir()
        return folder if (folder / "config.json").is_file() else None
    path = Path(model).expanduser()
    return path if path.is_dir() else None


def template_names() -> list[str]:
    """'auto' and every registered template (families and their earlier revisions): the template dropdowns."""
    return ["auto", *registry().names()]


def resolve_template(requested: str, model: str) -> TemplateChoice:
    """What the trainer will use for ``template`` with ``model`` (UnknownTemplate for a bad name)."""
    folder = model_folder(model)
    if model in DEMO_MODELS and folder is None and requested == "auto":
        return TemplateChoice(registry().get(DEMO_TEMPLATE), f"the {model} model's template '{DEMO_TEMPLATE}'")
    return choose_template(requested, model, folder)


def _with_system(messages: list[dict], system: str | None) -> list[dict]:
    if system and (not messages or messages[0]["role"] != "system"):
        return [{"role": "system", "content": system}, *messages]
    return messages


def _examples(datasets: list[str], dataset_dir: str | None, limit: int) -> tuple[list[dict], str]:
    """Up to ``limit`` canonical examples from the first local datasets, and a note about the rest."""
    reg = load_dataset_registry(dataset_dir)
    found: list[dict] = []
    notes = []
    for name in datasets:
        name, spec, local = reg.resolve(name)
        if local is None:
            notes.append(f"{name}: hub dataset, downloaded when training starts (no preview)")
            continue
        base = local.parent if local.is_file() else local
        for number, record in itertools.islice(iter_rows(local), limit * 4):
            try:
                found.append(convert_media_row(record, spec, base))  # image paths resolve against the file's folder
            except ValueError as exc:
                notes.append(f"{name} row {number}: {exc}")
            if len(found) >= limit:
                return found, "; ".join(notes)
    return found, "; ".join(notes)


def _segments(text: str, spans: tuple[tuple[int, int], ...], label: str) -> list[tuple[str, str | None]]:
    out, at = [], 0
    for start, end in spans:
        if start > at:
            out.append((text[at:start], None))
        out.append((text[start:end], label))
        at = end
    if at < len(text):
        out.append((text[at:], None))
    return out


def render_examples(
    *, model: str, template: str, stage: str, datasets: list[str], dataset_dir: str | None = None,
    train_on_prompt: bool = False, mask_history: bool = False, system_prompt: str | None = None,
    label: str = "trained", limit: int = PREVIEW_ROWS, labels: dict[str, str] | None = None,
) -> Preview:
    """A few examples as they will be trained, the loss-carrying characters labelled ``label`` (preference rows:
    the chosen and rejected replies labelled ``labels["chosen"]``/``["rejected"]``; kto rows by their label;
    GRPO prompts with the generation prompt, nothing trained until the model answers)."""
    try:
        examples, note = _examples(datasets, dataset_dir, limit)
        choice = None if stage == "pt" else resolve_template(template, model)
    except (DataError, UnknownTemplate) as exc:
        return Preview([], str(exc))
    segments: list[tuple[str, str | None]] = []
    images = [(ref, f"{number}" + (f".{i}" if len(example["images"]) > 1 else ""))
              for number, example in enumerate(examples, 1) for i, ref in enumerate(example.get("images") or [], 1)]
    for number, example in enumerate(examples, 1):
        if segments:
            segments.append((f"\n\n── {number} ──\n\n", None))
        if "text" in example:
            segments.append((example["text"], label))
            continue
        if choice is None:
            return Preview([], f"stage {stage!r} trains plain text; pick a text dataset")
        messages = _with_system(example["messages"], system_prompt)
        try:
            if example.keys() & {"chosen", "completion", "extra"}:  # preference, kto and prompt rows: replies shown apart
                segments += _reply_segments(choice, messages, example, labels or {})
                continue
            rendered = _render(choice, messages)
        except TemplateRefusal as exc:
            segments.append((f"[the template refuses this example: {exc}]", None))
            continue
        spans = rendered.spans[-1:] if mask_history else rendered.spans
        if train_on_prompt:
            spans = ((0, len(rendered.text)),)
        segments += _segments(rendered.text, spans, label)
    if choice is not None:
        note = "; ".join(p for p in (f"template: {choice.name} ({choice.reason})", note) if p)
    return Preview(segments, note, images)


def _reply_segments(
    choice: TemplateChoice, messages: list[dict], example: dict, labels: dict[str, str]
) -> list[tuple[str, str | None]]:
    """A prompt rendered once, then each reply of the example as the template continues it, labelled."""
    prompt = choice.template.render(messages, add_generation_prompt=True, model=choice.entry).text
    if "extra" in example:  # a GRPO prompt: the completion is generated and rewarded, not read from data
        return [(prompt, None), (labels.get("generated", "[the model's completion]"), None)]
    if "completion" in example:
        replies = [("desirable" if example["label"] else "undesirable", example["completion"])]
    else:
        replies = [("chosen", example["chosen"]), ("rejected", example["rejected"])]
    out: list[tuple[str, str | None]] = [(prompt, None)]
    for index, (kind, reply) in enumerate(replies):
        rendered = _render(choice, [*messages, {"role": "assistant", "content": reply}])
        start, end = rendered.spans[-1]
        if index:
            out.append(("\n   ⤷ ", None))
        out.append((rendered.text[start:end], labels.get(kind, kind)))
    return out


def _render(choice: TemplateChoice, messages: list[dict]):
    if "generation" in choice.template.source:
        return choice.template.render(messages, track_spans=True, model=choice.entry)
    from tunelab.engine.tokenize import render_with_spans  # pure Python: spans from prefix renders

    return render_with_spans(choice.template, messages, choice.entry)
