"""Declarative turn formats, compiled to a Jinja chat template.

Most chat formats are "a prefix, then each turn wrapped in role-specific text". A template family can state
just that (``turns:`` in its YAML) and this module writes the Jinja for it, with the assistant's content and
end-of-turn marked as ``{% generation %}`` so training masks come from the very string inference renders.

Slot strings use four placeholders: ``{content}``, ``{system}`` (only in ``fold``), ``{bos}`` and ``{eos}``.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict

ALTERNATE_ERROR = "Conversation roles must alternate user/assistant/user/assistant/..."
_PLACEHOLDER = re.compile(r"\{(content|system|bos|eos)\}")
_VARIABLES = {"content": "content", "system": "system_message", "bos": "bos_token", "eos": "eos_token"}


class Turns(BaseModel):
    """A turn-based chat format. Unset ``system`` and ``fold`` mean system messages are refused."""

    model_config = ConfigDict(extra="forbid")

    prefix: str = ""
    system: str | None = None
    fold: str | None = None
    user: str
    assistant: str
    generation: str
    trim: bool = False
    alternate: bool = False
    system_error: str = "System role not supported"
    loss_end: str | None = None


def _literal(text: str) -> str:
    """A Jinja string literal for ``text`` (the lexer decodes backslash escapes; other characters pass)."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")
    return f'"{escaped}"'


def slot_expression(slot: str) -> str:
    """Turn a slot like ``"[INST] {content} [/INST]"`` into a Jinja expression."""
    parts: list[str] = []
    position = 0
    for match in _PLACEHOLDER.finditer(slot):
        if match.start() > position:
            parts.append(_literal(slot[position : match.start()]))
        parts.append(_VARIABLES[match.group(1)])
        position = match.end()
    if position < len(slot):
        parts.append(_literal(slot[position:]))
    return " ~ ".join(parts) if parts else '""'


def _emit(slot: str) -> str:
    return "{{- " + slot_expression(slot) + " -}}" if slot else ""


def split_assistant(turns: Turns, stop_tokens: list[str]) -> tuple[str, str, str]:
    """Split the assistant slot into (before content, loss-carrying suffix, untrained rest).

    The loss covers the content and the suffix up to and including ``loss_end`` (or the last stop token found
    in the suffix); with neither, the whole suffix is trained.
    """
    before, marker, after = turns.assistant.partition("{content}")
    if not marker:
        raise ValueError("turns.assistant must contain {content}")
    ends = [turns.loss_end] if turns.loss_end else [t for t in stop_tokens if t] + ["{eos}"]
    cut = -1
    for end in ends:
        index = after.rfind(end)
        if index >= 0:
            cut = max(cut, index + len(end))
    if cut < 0:
        return before, after, ""
    return before, after[:cut], after[cut:]


def compile_turns(turns: Turns, default_system: str | None, stop_tokens: list[str]) -> str:
    """Write the Jinja chat template for a declarative turn format."""
    content = "message['content'] | trim" if turns.trim else "message['content']"
    system_value = "messages[0]['content'] | trim" if turns.trim else "messages[0]['content']"
    default = _literal(default_system) if default_system is not None else "none"
    before, loss, rest = split_assistant(turns, stop_tokens)
    lines = [
        "{%- if messages and messages[0]['role'] == 'system' -%}",
        f"{{%- set system_message = {system_value} -%}}",
        "{%- set loop_messages = messages[1:] -%}",
        "{%- else -%}",
        f"{{%- set system_message = {default} -%}}",
        "{%- set loop_messages = messages -%}",
        "{%- endif -%}",
    ]
    if turns.system is None and turns.fold is None:
        lines.append("{%- if messages and messages[0]['role'] == 'system' -%}")
        lines.append(f"{{{{- raise_exception({_literal(turns.system_error)}) -}}}}")
        lines.append("{%- endif -%}")
    lines.append(_emit(turns.prefix))
    if turns.system is not None:
        lines.append("{%- if system_message is not none -%}")
        lines.append(_emit(turns.system.replace("{content}", "{system}")))
        lines.append("{%- endif -%}")
    lines.append("{%- for message in loop_messages -%}")
    if turns.alternate:
        lines.append("{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}")
        lines.append(f"{{{{- raise_exception({_literal(ALTERNATE_ERROR)}) -}}}}")
        lines.append("{%- endif -%}")
    lines.append(f"{{%- set content = {content} -%}}")
    lines.append("{%- if message['role'] == 'user' -%}")
    if turns.fold is not None and turns.system is None:
        lines.append("{%- if loop.first and system_message is not none -%}")
        lines.append(f"{{%- set content = {slot_expression(turns.fold)} -%}}")
        lines.append("{%- endif -%}")
    lines.append(_emit(turns.user))
    lines.append("{%- elif message['role'] == 'assistant' -%}")
    lines.append(_emit(before))
    lines.append("{%- generation -%}" + _emit("{content}" + loss) + "{%- endgeneration -%}")
    lines.append(_emit(rest))
    lines.append("{%- else -%}")
    lines.append("{{- raise_exception('Unsupported role: ' ~ message['role']) -}}")
    lines.append("{%- endif -%}")
    lines.append("{%- endfor -%}")
    lines.append("{%- if add_generation_prompt -%}" + _emit(turns.generation) + "{%- endif -%}")
    return "\n".join(line for line in lines if line) + "\n"
