"""The engine interface: chat and completion streams for a base model and its named adapters.

Chat prompts are rendered with the registry template chosen for each served model (an adapter's own folder
carries the template it was trained with), and generation stops at the template's stop strings plus the
request's. One generation runs at a time per engine (a lock), so concurrent callers queue and outputs never mix.
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.core.chat_render import TemplateRefusal
from tunelab.core.generation import Delta, InferenceError, ModelNotFound, SamplingParams, TokenLogprob, TokenStream
from tunelab.core.media import IMAGE_PART_TYPES, IMAGE_PLACEHOLDER, count_placeholders, load_image, split_images
from tunelab.core.serving import ModelSpec
from tunelab.core.template_choice import TemplateChoice, choose_template

log = logging.getLogger(__name__)


@dataclass
class ServedModel:
    """One name clients can ask for: the base model (parent None) or an adapter (parent = base name)."""

    id: str
    parent: str | None = None


class Engine(ABC):
    """A loaded model (plus adapters) that streams text for chat messages or raw prompts."""

    name = "engine"

    def __init__(self) -> None:
        self._lock = threading.Lock()

    @abstractmethod
    def models(self) -> list[ServedModel]:
        """Served names, base model first."""

    @abstractmethod
    def chat(
        self, model: str, messages: list[dict], params: SamplingParams, cancel: threading.Event | None = None,
        tools: list[dict] | None = None,
    ) -> Iterator[Delta]:
        """Stream the assistant's reply to ``messages`` (``tools`` rendered by the template); the last Delta has
        finish_reason and token counts."""

    @abstractmethod
    def complete(
        self, model: str, prompt: str | list[int], params: SamplingParams, cancel: threading.Event | None = None,
        add_special_tokens: bool = True,
    ) -> Iterator[Delta]:
        """Stream a continuation of the raw ``prompt`` (text, or token ids)."""

    def prompt_logprobs(self, model: str, prompt: str | list[int], top: int, add_special_tokens: bool = True) -> list[TokenLogprob]:
        """Every prompt token with its log-probability given the tokens before it (the first has None)."""
        raise InferenceError(f"echo: prompt log-probabilities are not available from the {self.name} engine")

    def decode(self, model: str, ids: list[int]) -> str:
        """The text of token ids (for echoing a tokenized prompt)."""
        raise InferenceError(f"prompt: token-id prompts cannot be echoed by the {self.name} engine; send text")

    def greedy_ids(self, model: str, prompts: list[list[int]], max_new_tokens: int, stop_ids: list[int]) -> list[list[int]]:
        """Greedy continuations (token ids) of tokenized prompts, all submitted at once for the engine to batch."""
        raise InferenceError(f"batched generation is not available from the {self.name} engine")

    def tool_parser(self, model: str) -> str:
        """The tool-call format of ``model``'s template; InferenceError when its template renders no tools."""
        raise InferenceError(f"tools: the {self.name} engine does not render tools")

    def close(self) -> None:
        """Release the model (and any child process)."""

    def check_model(self, model: str) -> None:
        """Raise InferenceError (code model_not_found) unless ``model`` is served."""
        names = [m.id for m in self.models()]
        if model not in names:
            raise ModelNotFound(f"model {model!r} is not served here; available: {', '.join(names)}")


class TemplateBook:
    """The chat template of each served name: an adapter folder's own (as trained), else the base model's."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self._choices: dict[str, TemplateChoice] = {}

    def choice(self, model: str) -> TemplateChoice:
        """The TemplateChoice for a served name (cached)."""
        if model not in self._choices:
            adapter = self.spec.adapter(model)
            folder = Path(adapter.path) if adapter else Path(self.spec.path)
            catalog_id = (adapter.base_model if adapter else None) or self.spec.model
            choice = choose_template(self.spec.template, catalog_id, folder if folder.is_dir() else None)
            log.info("%s: chat template %s (%s)", model, choice.name, choice.reason)
            self._choices[model] = choice
        return self._choices[model]

    def render(self, model: str, messages: list[dict], tools: list[dict] | None = None) -> str:
        """The generation prompt for ``messages`` (and ``tools``) with ``model``'s template."""
        check_messages(messages)
        choice = self.choice(model)
        extra = {"tools": tools} if tools else {}
        if tools:
            self.tool_parser(model)
        try:
            return choice.template.render(messages, add_generation_prompt=True, model=choice.entry, **extra).text
        except TemplateRefusal as exc:
            raise InferenceError(f"messages: the chat template '{choice.name}' refuses them: {exc}") from None

    def stops(self, model: str) -> list[str]:
        """The template's stop strings for ``model``."""
        return list(self.choice(model).stop_strings)

    def tool_parser(self, model: str) -> str:
        """The tool-call format of ``model``'s template; InferenceError naming the families that have one."""
        from tunelab.core.tool_calls import tool_families

        choice = self.choice(model)
        if choice.template.tool_parser:
            return choice.template.tool_parser
        raise InferenceError(
            f"tools: the chat template '{choice.name}' of {model!r} does not render tools; templates that do: "
            f"{', '.join(tool_families())} (choose one with --template when the model was trained for it)"
        )


class LocalEngine(Engine):
    """An engine that renders chat templates itself and generates from the prompt (hf, in-process vLLM)."""

    image_text: str | None = None  # what stands for one image in a prompt; None: a text-only model

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        self.templates = TemplateBook(spec)

    def models(self) -> list[ServedModel]:
        """Base model first, then adapters (parent = base name)."""
        return [ServedModel(self.spec.name)] + [ServedModel(a.name, self.spec.name) for a in self.spec.adapters]

    def chat(
        self, model: str, messages: list[dict], params: SamplingParams, cancel: threading.Event | None = None,
        tools: list[dict] | None = None,
    ) -> Iterator[Delta]:
        """Render with the template and generate, stopping at its stop strings."""
        self.check_model(model)
        messages, images = self.take_images(model, messages)
        prompt = self.templates.render(model, messages, tools)
        stops = [*self.templates.stops(model), *params.stop]
        return self._locked(model, prompt, params, stops, cancel, add_special_tokens=False, images=images)

    def take_images(self, model: str, messages: list[dict]) -> tuple[list[dict], list[Any]]:
        """Messages with text contents (each image part replaced by the model's image text) and the images, decoded
        (RGB PIL images, in order); InferenceError when the model takes no images or a part is bad."""
        messages, images = text_and_images(messages)
        if self.image_text is None:
            if images:
                raise InferenceError(f"messages: {model!r} is a text-only model and takes no images; load a "
                                     "vision-language model (e.g. demo-vlm) to chat about pictures")
            return messages, []
        if count_placeholders(messages) != len(images):
            raise InferenceError(f"messages: the text holds {count_placeholders(messages)} {IMAGE_PLACEHOLDER} but "
                                 f"{len(images)} image(s) were given; send images as image_url parts only")
        try:  # an unreadable image is refused now, before any reply is streamed
            pictures = [load_image(ref) for ref in images]
        except ValueError as exc:
            raise InferenceError(f"messages: {exc}") from None
        text = self.image_text
        return [{**m, "content": m["content"].replace(IMAGE_PLACEHOLDER, text)} if isinstance(m.get("content"), str) else m
                for m in messages], pictures

    def complete(
        self, model: str, prompt: str | list[int], params: SamplingParams, cancel: threading.Event | None = None,
        add_special_tokens: bool = True,
    ) -> Iterator[Delta]:
        """Continue ``prompt`` verbatim, stopping only at the request's stop strings (and EOS)."""
        self.check_model(model)
        return self._locked(model, prompt, params, list(params.stop), cancel, add_special_tokens)

    def decode(self, model: str, ids: list[int]) -> str:
        """The text of token ids, as the served tokenizer decodes them."""
        return self.tokenizer.decode(ids)  # type: ignore[attr-defined]

    def tool_parser(self, model: str) -> str:
        """The tool-call format of ``model``'s template."""
        self.check_model(model)
        return self.templates.tool_parser(model)

    def _locked(self, model, prompt, params, stops, cancel, add_special_tokens, images=None) -> Iterator[Delta]:
        with self._lock:
            stream = TokenStream(stops)
            last = Delta()
            for delta in self.generate(model, prompt, params, stream, cancel or threading.Event(), add_special_tokens, images):
                last = delta
                if delta.text or delta.finish_reason or delta.logprobs:
                    yield delta
            if last.finish_reason is None:
                yield Delta(finish_reason="stop")

    @abstractmethod
    def generate(
        self, model: str, prompt: str | list[int], params: SamplingParams, stream: TokenStream, cancel: threading.Event,
        add_special_tokens: bool, images: list[Any] | None = None,
    ) -> Iterator[Delta]:
        """Yield text pieces already passed through ``stream`` (stop strings, logprobs); the last one has
        finish_reason and counts. ``images``: the prompt's images, decoded (take_images), in order (vision-language
        models)."""


def check_messages(messages: list[dict]) -> None:
    """Raise InferenceError unless ``messages`` is a non-empty list of messages with known roles whose contents are
    text or content parts (text, image_url, image)."""
    if not messages:
        raise InferenceError("messages: at least one message is needed")
    for i, message in enumerate(messages):
        role, content = message.get("role"), message.get("content")
        if role not in ("system", "user", "assistant", "tool", "developer"):
            raise InferenceError(f"messages[{i}].role: {role!r} is not one of system, user, assistant, tool")
        if isinstance(content, list):
            for j, part in enumerate(content):
                kind = part.get("type") if isinstance(part, dict) else None
                if kind not in ("text", *IMAGE_PART_TYPES):
                    raise InferenceError(f"messages[{i}].content[{j}].type: {kind!r} is not one of text, image_url, image")
        elif not isinstance(content, str) and content is not None:
            raise InferenceError(f"messages[{i}].content: give text or a list of content parts (text, image_url)")


def text_and_images(messages: list[dict]) -> tuple[list[dict], list[str]]:
    """Checked messages with text contents (``<image>`` per image part) and their image refs, in order."""
    check_messages(messages)
    try:
        return split_images(messages)
    except ValueError as exc:
        raise InferenceError(f"messages: {exc}") from None
