"""The model catalog: >= 800 hub ids, each resolving to its template; quantized copies render like their originals."""

from __future__ import annotations

import re

from tunelab.core.templates import BASE_TEMPLATE, registry

QUANT_SUFFIX = re.compile(r"-(GPTQ-Int[48]|AWQ|FP8|[48]bits)$", re.IGNORECASE)
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "2+2?"}]


def test_catalog_size_and_every_id_resolves() -> None:
    reg = registry()
    ids = [entry.id for template in reg.templates.values() for entry in template.model_entries]
    assert len(ids) >= 800 and len(ids) == len(reg.catalog)
    for model_id in ids:
        hit = reg.for_model(model_id)
        assert hit.entry.id == model_id
        assert (hit.template.name == BASE_TEMPLATE) == (hit.entry.base or hit.family.name == BASE_TEMPLATE), model_id


def test_quantized_copies_render_like_their_original() -> None:
    reg = registry()
    checked = 0
    for key, hit in reg.catalog.items():
        original = reg.catalog.get(QUANT_SUFFIX.sub("", key))
        if not QUANT_SUFFIX.search(key) or original is None:
            continue
        assert hit.template is original.template, key
        ours = hit.template.render(CHAT, True, model=hit.entry).text
        assert ours == original.template.render(CHAT, True, model=original.entry).text, key
        checked += 1
    assert checked >= 100
