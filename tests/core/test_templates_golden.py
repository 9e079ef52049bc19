"""Every golden vector (official HF chat templates) renders byte-identically through tunelab's registry."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tunelab.core.chat_render import TemplateRefusal
from tunelab.core.templates import registry

HERE = Path(__file__).resolve().parent
GOLDEN_DIRS = [HERE.parent / "data" / "golden_templates"]
for extra in (os.environ.get("TUNELAB_GOLDEN_DIR"), HERE.parents[2] / "shared" / "golden" / "templates"):
    if extra and Path(extra).is_dir():
        GOLDEN_DIRS.append(Path(extra))


def _vectors() -> list[tuple[str, str, dict, dict]]:
    seen: dict[str, tuple] = {}
    for directory in GOLDEN_DIRS:
        for path in sorted(directory.glob("*.json")):
            vector = json.loads(path.read_text(encoding="utf-8"))
            for case_id, case in vector["cases"].items():
                seen[f"{path.stem}:{case_id}"] = (vector, case)
    return [(key, *value) for key, value in sorted(seen.items())]


VECTORS = _vectors()


def _template(vector: dict):
    """The template a vector checks: the model's current one, or the earlier revision it names (``template``)."""
    hit = registry().for_model(vector["model_id"])
    return (registry().get(vector["template"]) if "template" in vector else hit.template), hit.entry


@pytest.mark.parametrize(("key", "vector", "case"), VECTORS, ids=[v[0] for v in VECTORS])
def test_golden_vector(key: str, vector: dict, case: dict) -> None:
    template, entry = _template(vector)
    kwargs = {k: v for k, v in vector.get("render_kwargs", {}).items() if k not in ("bos_token", "eos_token")}
    kwargs.pop("tools", None), kwargs.pop("documents", None)
    kwargs = {k: v for k, v in kwargs.items() if k not in ("unk_token", "pad_token")}
    if "error" in case:
        with pytest.raises(TemplateRefusal):
            template.render(case["messages"], case["add_generation_prompt"], model=entry, **kwargs)
        return
    rendered = template.render(case["messages"], case["add_generation_prompt"], model=entry, **kwargs).text
    assert rendered == case["rendered"]


def test_golden_tokens_match_catalog() -> None:
    """The bos/eos the catalog gives a model are the official tokenizer's, where the template uses them."""
    wrong = []
    for directory in GOLDEN_DIRS:
        for path in sorted(directory.glob("*.json")):
            vector = json.loads(path.read_text(encoding="utf-8"))
            if vector.get("token_confidence") == "not_referenced_by_template":
                continue
            hit = registry().for_model(vector["model_id"])
            bos = hit.entry.bos_token if hit.entry.bos_token is not None else hit.template.bos_token
            eos = hit.entry.eos_token if hit.entry.eos_token is not None else hit.template.eos_token
            if (bos or None, eos or None) != (vector["bos_token"] or None, vector["eos_token"] or None):
                wrong.append(f"{vector['model_id']}: {(bos, eos)} != {(vector['bos_token'], vector['eos_token'])}")
    assert not wrong, "\n".join(wrong)
