"""Choosing the chat template for a model: the model folder's own, the catalog's, or the one the user named.

`template: auto` prefers a local model's own chat_template (saying which registered family it matches, if
any), then the catalog entry for the model id, then the plain ``text`` template. A named family is used as
told, with a warning when the model's own template differs from it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from tunelab.core.chat_render import TemplateRefusal
from tunelab.core.templates import BASE_TEMPLATE, ChatTemplate, ModelEntry, UnknownTemplate, registry

_PROBES = [
    ([{"role": "user", "content": "Hi"}], True),
    ([{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"}, {"role": "user", "content": "Q2"}], True),
    ([{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}], False),
]


@dataclass
class TemplateChoice:
    """The template to train and serve with, and why it was chosen."""

    template: ChatTemplate
    reason: str
    entry: ModelEntry | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def stop_strings(self) -> list[str]:
        """Strings that end a reply: the model's own eos (a catalog override) first, then the family's."""
        own = self.entry.eos_token if self.entry and self.entry.eos_token else None
        stops = self.template.stop_strings
        return ([own] if own and own not in stops else []) + stops

    @property
    def name(self) -> str:
        """The family name, or 'model' for a model's own template that matches no family."""
        return self.template.name


def read_model_template(model_dir: Path) -> tuple[str | None, dict]:
    """A local model folder's own chat template source (or None) and its tokenizer_config.json."""
    config_path = model_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    jinja_path = model_dir / "chat_template.jinja"
    if jinja_path.is_file():
        return jinja_path.read_text(encoding="utf-8"), config
    source = config.get("chat_template")
    if isinstance(source, list):  # named templates: take "default"
        source = next((t.get("template") for t in source if t.get("name") == "default"), None)
    return (source if isinstance(source, str) else None), config


def _token(config: dict, key: str) -> str | None:
    value = config.get(key)
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def own_template(source: str, config: dict) -> ChatTemplate:
    """Wrap a model's own Jinja source as an (unregistered) ChatTemplate."""
    eos = _token(config, "eos_token")
    return ChatTemplate.model_construct(
        name="model", title="the model's own chat_template", notes="", aliases=[], models=[],
        bos_token=_token(config, "bos_token"), eos_token=eos, stop_tokens=[eos] if eos else [],
        default_system=None, quirks=[], render_kwargs={}, ollama=None, turns=None, jinja=source,
    )


def _signature(template: ChatTemplate, bos: str | None, eos: str | None) -> tuple:
    entry = ModelEntry(id="probe", bos_token=bos or "", eos_token=eos or "")
    out = []
    for messages, gen in _PROBES:
        try:
            out.append(template.render(messages, gen, model=entry).text)
        except TemplateRefusal as exc:
            out.append(f"refused: {exc}")
        except Exception as exc:  # a malformed template from a model folder
            out.append(f"broken: {type(exc).__name__}")
    return tuple(out)


def matching_families(template: ChatTemplate) -> list[str]:
    """Registered families that render the probe conversations exactly like ``template``."""
    bos, eos = template.bos_token, template.eos_token
    target = _signature(template, bos, eos)
    reg = registry()
    return [name for name in reg.names() if name != BASE_TEMPLATE and _signature(reg.templates[name], bos, eos) == target]


def _first_match(own: ChatTemplate) -> str | None:
    """The family whose source is the model's own, word for word (no rendering: compiling every family's Jinja costs
    ~0.7 CPU seconds at each run's start), else the first that renders the probe conversations the same."""
    reg = registry()
    same = [name for name in reg.names() if name != BASE_TEMPLATE and reg.templates[name].source == own.jinja]
    if same:
        return same[0]
    matches = matching_families(own)
    return matches[0] if matches else None


def choose_template(requested: str, model: str, model_dir: Path | None = None) -> TemplateChoice:
    """Resolve ``requested`` ('auto' or a family name) for a model id or local model folder."""
    reg = registry()
    own = None
    if model_dir is not None and model_dir.is_dir():
        source, tok_config = read_model_template(model_dir)
        own = own_template(source, tok_config) if source else None
    if requested != "auto":
        family = reg.get(requested)
        choice = TemplateChoice(family, f"template '{requested}' as configured", _catalog_entry(model))
        if own is not None and family.source != own.jinja and requested not in matching_families(own):
            choice.warnings.append(
                f"the model's own chat_template differs from '{requested}'; training with '{requested}' as configured"
            )
        return choice
    if own is not None:
        match = _first_match(own)
        if match:
            family = reg.get(match)
            entry = ModelEntry(id=model, bos_token=own.bos_token, eos_token=own.eos_token)
            return TemplateChoice(family, f"the model folder's own chat_template, which matches family '{family.name}'", entry)
        return TemplateChoice(own, "the model folder's own chat_template (it matches no registered family)")
    try:
        hit = reg.for_model(model)
    except UnknownTemplate:
        return TemplateChoice(
            reg.get(BASE_TEMPLATE), f"no chat template in the model and '{model}' is not in the catalog: plain text",
            warnings=[f"'{model}' has no chat template and is not in the catalog; set template=<family> if it is a chat model"],
        )
    kind = "base model" if hit.entry.base else "catalog"
    return TemplateChoice(hit.template, f"{kind} entry for '{hit.entry.id}' -> '{hit.template.name}'", hit.entry)


def _catalog_entry(model: str) -> ModelEntry | None:
    try:
        return registry().for_model(model).entry
    except UnknownTemplate:
        return None
