"""The chat-template registry: one YAML file per template family in templates/, plus the model catalog.

A family file names the family, the model ids that use it (the catalog), its special tokens, default system
prompt and quirks, and its format: either declarative ``turns:`` (compiled by tunelab.core.turns) or a Jinja
template written for tunelab (``<name>.jinja`` beside the YAML). Rendering goes through the same Jinja
environment as transformers, so the string is what the vendor's official template produces.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tunelab.core.chat_render import Rendered, render_source, serving_source
from tunelab.core.paths import resource_dir
from tunelab.core.turns import Turns, compile_turns

# A family's current template is ``family``; an earlier official revision stays selectable as ``family@YYYY-MM-DD``
# (the date the vendor published it), in its own file templates/family@YYYY-MM-DD.yaml.
REVISION_NAME = r"^[a-z0-9][a-z0-9_]*(@\d{4}-\d{2}-\d{2})?$"

Quirk = Literal[
    "no_system",  # system messages are refused
    "fold_system",  # the system prompt is folded into the first user turn
    "default_system",  # a system prompt is inserted when none is given
    "think",  # reasoning / think blocks
    "tools",  # tool or function calls
    "date",  # inserts a date into the system prompt
    "alternate",  # roles must alternate user/assistant
    "strips_history_reasoning",  # earlier assistant turns lose their reasoning
    "completion",  # plain text for base models, no chat markup
    "classifier",  # a judge format (e.g. safety): the messages are its input, there are no replies to train
]


class ModelEntry(BaseModel):
    """A catalog entry: a hub model id, optionally with tokens that differ from the family's."""

    model_config = ConfigDict(extra="forbid")

    id: str
    bos_token: str | None = None
    eos_token: str | None = None
    base: bool = False
    render_kwargs: dict[str, Any] = {}


class ChatTemplate(BaseModel):
    """One template family, as written in templates/<name>.yaml."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=REVISION_NAME)
    title: str = ""
    notes: str = ""
    aliases: list[str] = []
    models: list[str | ModelEntry] = []
    bos_token: str | None = None
    eos_token: str | None = None
    stop_tokens: list[str] = []
    default_system: str | None = None
    quirks: list[Quirk] = []
    render_kwargs: dict[str, Any] = {}
    ollama: str | None = None
    tool_parser: Literal["hermes", "xml_function"] | None = None  # how tool calls read back (core.tool_calls)
    turns: Turns | None = None
    jinja: str | None = None

    @model_validator(mode="after")
    def _one_format(self) -> "ChatTemplate":
        if (self.turns is None) == (self.jinja is None):
            raise ValueError("give exactly one of 'turns' (declarative) or a Jinja template (<name>.jinja)")
        return self

    @cached_property
    def source(self) -> str:
        """The Jinja chat template (what exports write as ``chat_template``)."""
        if self.jinja is not None:
            return self.jinja
        assert self.turns is not None
        return compile_turns(self.turns, self.default_system, self.stop_tokens)

    @property
    def serving_jinja(self) -> str:
        """The template as exports and servers get it: ``source`` without the training-only generation tags."""
        return serving_source(self.source)

    @property
    def model_entries(self) -> list[ModelEntry]:
        """Catalog entries as ModelEntry objects."""
        return [ModelEntry(id=m) if isinstance(m, str) else m for m in self.models]

    @property
    def stop_strings(self) -> list[str]:
        """Strings that end an assistant turn at generation time (eos first)."""
        stops = [self.eos_token] if self.eos_token else []
        return stops + [t for t in self.stop_tokens if t not in stops]

    def render(
        self,
        messages: list[dict],
        add_generation_prompt: bool = False,
        *,
        model: ModelEntry | None = None,
        track_spans: bool = False,
        **kwargs: Any,
    ) -> Rendered:
        """Render messages exactly as the official template would (TemplateRefusal if it refuses them)."""
        tokens = {
            "bos_token": (model.bos_token if model and model.bos_token is not None else self.bos_token) or "",
            "eos_token": (model.eos_token if model and model.eos_token is not None else self.eos_token) or "",
        }
        return render_source(
            self.source, messages, add_generation_prompt, track_spans=track_spans,
            **{**tokens, **self.render_kwargs, **(model.render_kwargs if model else {}), **kwargs},
        )


BASE_TEMPLATE = "text"


def split_revision(name: str) -> tuple[str, str | None]:
    """'mixtral@2023-12-11' -> ('mixtral', '2023-12-11'); a plain family name -> (name, None)."""
    family, sep, date = name.partition("@")
    return family, (date if sep else None)


class TemplateFileError(ValueError):
    """A template file is malformed; the message names the file and the problem."""


class UnknownTemplate(KeyError):
    """No template or model id by that name; ``suggestions`` holds the closest known names."""

    def __init__(self, kind: str, name: str, suggestions: list[str], reason: str = ""):
        self.kind, self.name, self.suggestions = kind, name, suggestions
        hint = f" ({reason})" if reason else ""
        hint += f"; closest: {', '.join(suggestions)}" if suggestions else ""
        super().__init__(f"unknown {kind} {name!r}{hint}")

    def __str__(self) -> str:
        return self.args[0]


@dataclass(frozen=True)
class CatalogHit:
    """A model id resolved through the catalog: the template to use, its entry, and the family it belongs to.

    Base (not instruction-tuned) models are listed in their family's file with ``base: true`` but render with
    the plain ``text`` template: they were never trained on the family's chat markup.
    """

    template: ChatTemplate
    entry: ModelEntry
    family: ChatTemplate


class ForeignName(BaseModel):
    """Another tool's template name (templates/aliases/<tool>.yaml): the family it renders like, or why none."""

    model_config = ConfigDict(extra="forbid")

    tool: str
    family: str | None = None
    model: str | None = None
    covers: list[str] = []
    reason: str | None = None

    @model_validator(mode="after")
    def _family_or_reason(self) -> "ForeignName":
        if (self.family is None) == (self.reason is None):
            raise ValueError("give exactly one of 'family' or 'reason'")
        return self


class TemplateRegistry:
    """All template families and the model catalog, validated on load."""

    def __init__(self, templates: dict[str, ChatTemplate], foreign: dict[str, ForeignName] | None = None):
        self.templates = templates
        self.foreign = foreign or {}
        for name, foreign_name in self.foreign.items():
            for family in [foreign_name.family, *foreign_name.covers]:
                if family is not None and family not in templates:
                    raise TemplateFileError(f"{foreign_name.tool} template {name!r}: no family {family!r}")
        for name, template in templates.items():
            family, date = split_revision(name)
            if date is not None and family not in templates:
                raise TemplateFileError(f"{name}: a revision of {family!r}, which is not a template family")
            if date is not None and (template.models or template.aliases):
                raise TemplateFileError(f"{name}: a revision lists no models or aliases (the catalog uses the current {family!r})")
        self.aliases: dict[str, str] = {}
        for template in templates.values():
            for alias in template.aliases:
                if alias in templates or alias in self.aliases:
                    raise TemplateFileError(f"{template.name}: alias {alias!r} is already a template name or alias")
                self.aliases[alias] = template.name
        self.catalog: dict[str, CatalogHit] = {}
        for template in templates.values():
            for entry in template.model_entries:
                key = entry.id.lower()
                if key in self.catalog:
                    other = self.catalog[key].template.name
                    raise TemplateFileError(f"model id {entry.id!r} is listed by both {other!r} and {template.name!r}")
                chosen = templates.get(BASE_TEMPLATE, template) if entry.base else template
                self.catalog[key] = CatalogHit(chosen, entry, template)

    def names(self) -> list[str]:
        """Sorted template names: families and their earlier revisions (``family@date``)."""
        return sorted(self.templates)

    def revisions(self, family: str) -> list[str]:
        """``family`` (its current template) then its earlier revisions, newest first."""
        family = split_revision(self.aliases.get(family, family))[0]
        older = sorted((n for n in self.templates if split_revision(n)[0] == family and n != family), reverse=True)
        return [family, *older]

    def get(self, name: str) -> ChatTemplate:
        """The family called ``name`` (UnknownTemplate with suggestions otherwise)."""
        name = self.aliases.get(name, name)
        if name in self.templates:
            return self.templates[name]
        foreign = self.foreign.get(name)
        if foreign is not None and foreign.family is not None:
            return self.templates[foreign.family]
        reason = f"{foreign.tool}'s name: {foreign.reason}" if foreign is not None and foreign.reason else ""
        family, date = split_revision(name)
        if date is not None and self.aliases.get(family, family) in self.templates:
            raise UnknownTemplate("template", name, [], f"its revisions: {', '.join(self.revisions(family))}")
        raise UnknownTemplate("template", name, _closest(name, [*self.templates, *self.aliases]), reason)

    def for_model(self, model_id: str) -> CatalogHit:
        """The catalog entry for a hub model id (case-insensitive; UnknownTemplate otherwise)."""
        hit = self.catalog.get(model_id.strip().strip("/").lower())
        if hit is None:
            ids = [h.entry.id for h in self.catalog.values()]
            raise UnknownTemplate("model id", model_id, _closest(model_id, ids))
        return hit


def _closest(name: str, choices: Any, n: int = 5) -> list[str]:
    choices = list(choices)
    lowered = {c.lower(): c for c in choices}
    found = difflib.get_close_matches(name.lower(), list(lowered), n=n, cutoff=0.5)
    if not found:
        tail = name.lower().rsplit("/", 1)[-1]
        found = [c for c in lowered if tail and tail in c][:n]
    return [lowered[f] for f in found]


def load_template_file(path: Path) -> ChatTemplate:
    """Load and validate one templates/<name>.yaml (with its optional <name>.jinja)."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise TemplateFileError(f"{path}: invalid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise TemplateFileError(f"{path}: expected a mapping at the top level")
    jinja_path = path.with_suffix(".jinja")
    if jinja_path.is_file():
        if "jinja" in raw:
            raise TemplateFileError(f"{path}: has both an inline 'jinja' and {jinja_path.name}")
        raw["jinja"] = jinja_path.read_text(encoding="utf-8")
    try:
        template = ChatTemplate.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '<file>'}: {e['msg']}" for e in exc.errors())
        raise TemplateFileError(f"{path}: {problems}") from None
    if template.name != path.stem:
        raise TemplateFileError(f"{path}: name {template.name!r} must match the file name {path.stem!r}")
    if "generation" not in template.source and "completion" not in template.quirks:
        raise TemplateFileError(f"{path}: the template marks no {{% generation %}} block (needed for loss masks)")
    return template


def load_registry(directory: Path | None = None) -> TemplateRegistry:
    """Load every family in ``directory`` (default: the shipped templates/)."""
    directory = directory or resource_dir("templates")
    templates: dict[str, ChatTemplate] = {}
    for path in sorted(directory.glob("*.yaml")):
        template = load_template_file(path)
        templates[template.name] = template
    orphans = {p.stem for p in directory.glob("*.jinja")} - set(templates)
    if orphans:
        raise TemplateFileError(f"{directory}: Jinja files without a YAML: {', '.join(sorted(orphans))}")
    return TemplateRegistry(templates, load_foreign_names(directory / "aliases"))


def load_foreign_names(directory: Path) -> dict[str, ForeignName]:
    """Other tools' template names from ``directory``/<tool>.yaml (``reasons`` and ``names`` tables)."""
    names: dict[str, ForeignName] = {}
    for path in sorted(directory.glob("*.yaml")):
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        reasons = raw.get("reasons", {})
        for name, entry in (raw.get("names") or {}).items():
            entry = dict(entry, tool=raw.get("tool", path.stem))
            if "reason" in entry:
                entry["reason"] = reasons.get(entry["reason"], entry["reason"])
            try:
                names.setdefault(name, ForeignName.model_validate(entry))
            except ValidationError as exc:
                raise TemplateFileError(f"{path}: {name}: {exc.errors()[0]['msg']}") from None
    return names


@lru_cache(maxsize=1)
def registry() -> TemplateRegistry:
    """The shipped registry, loaded once per process."""
    return load_registry()
