"""Ollama Modelfile TEMPLATE strings derived from a registry template.

The Go template is read off the chat template itself: one turn is rendered with marker strings in place of
the system prompt, the prompt and the response, and the markers become ``{{ .System }}``, ``{{ .Prompt }}``
and ``{{ .Response }}``. What Ollama renders is therefore what the family renders for a single turn.
"""

from __future__ import annotations

from pathlib import Path

from tunelab.core.chat_render import TemplateRefusal
from tunelab.core.files import write_atomic
from tunelab.core.templates import ChatTemplate

_SYSTEM, _PROMPT, _RESPONSE = "\ue010S\ue011", "\ue010P\ue011", "\ue010R\ue011"


def _go(text: str, bos: str | None) -> str:
    if bos and text.startswith(bos):  # Ollama's tokenizer adds BOS itself
        text = text[len(bos) :]
    return text.replace(_SYSTEM, "{{ .System }}").replace(_PROMPT, "{{ .Prompt }}")


def modelfile_template(template: ChatTemplate) -> str:
    """The Go TEMPLATE for one system/prompt/response turn."""
    user = {"role": "user", "content": _PROMPT}
    plain = _go(template.render([user], add_generation_prompt=True).text, template.bos_token)
    try:
        with_system = _go(
            template.render([{"role": "system", "content": _SYSTEM}, user], add_generation_prompt=True).text,
            template.bos_token,
        )
    except TemplateRefusal:
        with_system = None
    full = template.render([user, {"role": "assistant", "content": _RESPONSE}]).text
    after = full[full.index(_RESPONSE) + len(_RESPONSE) :] if _RESPONSE in full else ""
    head = plain if not with_system or with_system == plain else "{{ if .System }}" + with_system + "{{ else }}" + plain + "{{ end }}"
    return head + "{{ .Response }}" + after


def modelfile(template: ChatTemplate, base: str, adapter: str | None = None) -> str:
    """A complete Modelfile: FROM (and ADAPTER), TEMPLATE and stop parameters."""
    lines = [f"FROM {base}"] + ([f"ADAPTER {adapter}"] if adapter else [])
    lines.append(f'TEMPLATE """{modelfile_template(template)}"""')
    lines += [f'PARAMETER stop "{stop}"' for stop in template.stop_strings]
    return "\n".join(lines) + "\n"


def write_modelfile(folder: Path, template: ChatTemplate, base: str, adapter: str | None = None) -> Path:
    """Write <folder>/Modelfile."""
    path = Path(folder) / "Modelfile"
    write_atomic(path, modelfile(template, base, adapter))
    return path
