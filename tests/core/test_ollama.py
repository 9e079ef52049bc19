"""Ollama Modelfile TEMPLATE strings send the same prompt as the family's chat template (generation prompt) and
close a reply the same way (what follows the content in a rendered turn)."""

from __future__ import annotations

import re

import pytest

from tunelab.core.chat_render import TemplateRefusal
from tunelab.core.ollama import modelfile, modelfile_template
from tunelab.core.templates import registry

IF_SYSTEM = re.compile(r"\{\{ if \.System \}\}(.*)\{\{ else \}\}(.*)\{\{ end \}\}", re.S)


def go_render(template: str, system: str | None, prompt: str, response: str) -> str:
    """Evaluate the small Go-template subset tunelab emits (if .System / .System / .Prompt / .Response)."""
    match = IF_SYSTEM.search(template)
    if match:
        template = template[: match.start()] + (match.group(1) if system else match.group(2)) + template[match.end():]
    return template.replace("{{ .System }}", system or "").replace("{{ .Prompt }}", prompt).replace("{{ .Response }}", response)


def _families() -> list[str]:
    return [n for n, t in sorted(registry().templates.items()) if "classifier" not in t.quirks]


@pytest.mark.parametrize("name", _families())
def test_one_turn_matches_the_chat_template(name: str) -> None:
    template = registry().get(name)
    try:
        go = modelfile_template(template)
    except TemplateRefusal:
        pytest.skip(f"{name} refuses a plain one-turn conversation")
    bos = template.bos_token or ""
    strip = lambda text: text[len(bos):] if bos and text.startswith(bos) else text  # noqa: E731
    for system in (None, "Be brief."):
        prompt = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": "Hi"}]
        try:
            expected_prompt = strip(template.render(prompt, add_generation_prompt=True).text)
            full = template.render([*prompt, {"role": "assistant", "content": "Hello"}]).text
        except TemplateRefusal:
            continue
        rendered = go_render(go, system, "Hi", "\0")
        assert rendered.split("\0")[0] == expected_prompt
        assert rendered.split("\0")[1] == full[full.rindex("Hello") + len("Hello"):]


def test_modelfile_has_stops_and_adapter() -> None:
    text = modelfile(registry().get("llama3"), base="meta-llama/Meta-Llama-3-8B-Instruct", adapter=".")
    assert text.startswith("FROM meta-llama/Meta-Llama-3-8B-Instruct\nADAPTER .\nTEMPLATE \"\"\"")
    assert 'PARAMETER stop "<|eot_id|>"' in text
