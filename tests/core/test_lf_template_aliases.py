"""LLaMA-Factory's template names (templates/aliases/llamafactory.yaml) resolve to families that render what the
model LLaMA-Factory registers under that name renders: its golden vectors where we have them, else the catalog's."""

from __future__ import annotations

import json

import pytest

from tunelab.core.chat_render import TemplateRefusal
from tunelab.core.templates import UnknownTemplate, registry

from tests.core.test_templates_golden import GOLDEN_DIRS

CONVERSATIONS = [
    ([{"role": "user", "content": "Hi there"}], True),
    ([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}], False),
    ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
      {"role": "assistant", "content": "4"}, {"role": "user", "content": "3+3?"}], True),
]
FOREIGN = sorted(registry().foreign.items())


def _golden(model_id: str) -> list[dict]:
    cases = []
    for directory in GOLDEN_DIRS:
        for path in sorted(directory.glob("*.json")):
            vector = json.loads(path.read_text(encoding="utf-8"))
            if vector["model_id"].lower() == model_id.lower():
                kwargs = {k: v for k, v in vector.get("render_kwargs", {}).items()
                          if k not in ("bos_token", "eos_token", "unk_token", "pad_token", "tools", "documents")}
                cases += [dict(case, kwargs=kwargs) for case in vector["cases"].values()]
    return cases


def _render(template, messages, generation, entry, **kwargs) -> str:
    try:
        return template.render(messages, generation, model=entry, **kwargs).text
    except TemplateRefusal as exc:
        return f"refused: {type(exc).__name__}"


@pytest.mark.parametrize(("name", "entry"), [f for f in FOREIGN if f[1].model], ids=[f[0] for f in FOREIGN if f[1].model])
def test_alias_renders_like_the_model_it_names(name: str, entry) -> None:
    reg = registry()
    family = reg.get(name)
    hit = reg.for_model(entry.model)
    assert not hit.entry.base, f"{entry.model} is a base model; name an instruct model"
    golden = _golden(entry.model)
    for case in golden:
        if "error" in case:
            with pytest.raises(TemplateRefusal):
                family.render(case["messages"], case["add_generation_prompt"], model=hit.entry, **case["kwargs"])
        else:
            rendered = family.render(case["messages"], case["add_generation_prompt"], model=hit.entry, **case["kwargs"])
            assert rendered.text == case["rendered"]
    if not golden:
        for messages, generation in CONVERSATIONS:
            assert _render(family, messages, generation, hit.entry) == _render(hit.template, messages, generation, hit.entry)


def test_every_entry_has_a_family_or_a_stated_reason() -> None:
    reg = registry()
    assert len(reg.foreign) >= 120  # every name LLaMA-Factory registers
    for name, entry in reg.foreign.items():
        if name in reg.templates or name in reg.aliases:
            assert entry.family in (None, reg.get(name).name), f"{name}: our own name means {reg.get(name).name}"
        if entry.family is None:
            assert len(entry.reason or "") > 20
            with pytest.raises(UnknownTemplate, match="LLaMA-Factory's name: "):
                reg.get(name)
        else:
            assert reg.get(name) is reg.templates[entry.family]


def test_common_names_resolve() -> None:
    reg = registry()
    assert reg.get("qwen3_nothink").name == "chatml"  # Qwen3-*-Instruct-2507: plain ChatML, no think block
    with pytest.raises(UnknownTemplate, match="vision"):
        reg.get("llava")
