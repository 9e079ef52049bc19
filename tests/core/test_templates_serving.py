"""The serving form of every registry template (what exports, GGUF files and servers get): no training-only
{% generation %} tags, and plain jinja2 (no tunelab extension) renders it byte-identically to the registry."""

from __future__ import annotations

import datetime as dt

import jinja2
import pytest

from tunelab.core.chat_render import TemplateRefusal, serving_source
from tunelab.core.templates import registry

PROBES = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"},
     {"role": "user", "content": "Q2"}],
]


def plain_jinja() -> jinja2.Environment:
    """jinja2 as chat-template consumers set it up, without tunelab's generation-tag extension."""
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    env.globals.update(raise_exception=raise_exception, strftime_now=lambda fmt: dt.datetime(2024, 7, 26).strftime(fmt))
    return env


def test_generation_tags_become_same_whitespace_ifs() -> None:
    source = "A{%- generation -%}\n  B {% endgeneration %}C{%+ generation +%}D{%endgeneration%}"
    assert serving_source(source) == "A{%- if true -%}\n  B {% endif %}C{%+ if true +%}D{% endif %}"


@pytest.mark.parametrize("name", registry().names())
def test_serving_template_renders_in_plain_jinja2(name: str) -> None:
    template = registry().get(name)
    source = template.serving_jinja
    assert "generation %}" not in source and "generation -%}" not in source
    compiled = plain_jinja().from_string(source)
    tokens = {"bos_token": template.bos_token or "", "eos_token": template.eos_token or "", **template.render_kwargs}
    for messages in PROBES:
        for generation in (True, False):
            try:
                ours = template.render(messages, add_generation_prompt=generation).text
            except TemplateRefusal:
                with pytest.raises(jinja2.exceptions.TemplateError):
                    compiled.render(messages=messages, add_generation_prompt=generation, tools=None, documents=None, **tokens)
                continue
            plain = compiled.render(messages=messages, add_generation_prompt=generation, tools=None, documents=None, **tokens)
            assert plain == ours
