"""`template: auto` picks the model's own template (naming the family it matches) or the catalog's, and says why;
a model whose own template differs from a named family gets a warning; base models get the plain text template."""

from __future__ import annotations

import json
from pathlib import Path

from tunelab.core.template_choice import choose_template
from tunelab.core.templates import registry


def _model_dir(tmp_path: Path, template: str | None) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    config = {"bos_token": "<s>", "eos_token": "<|im_end|>"}
    if template is not None:
        (folder / "chat_template.jinja").write_text(template)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def test_own_template_matching_a_family(tmp_path: Path) -> None:
    folder = _model_dir(tmp_path, registry().get("chatml").source)
    choice = choose_template("auto", str(folder), folder)
    assert choice.name == "chatml" and "matches family 'chatml'" in choice.reason


def test_own_template_matching_no_family_is_used_and_said(tmp_path: Path) -> None:
    custom = "{% for m in messages %}<<{{ m['role'] }}>>{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}<<assistant>>{% endif %}"
    folder = _model_dir(tmp_path, custom)
    choice = choose_template("auto", str(folder), folder)
    assert choice.name == "model" and "matches no registered family" in choice.reason
    text = choice.template.render([{"role": "user", "content": "hi"}], add_generation_prompt=True).text
    assert text == "<<user>>hi<<assistant>>"
    named = choose_template("llama3", str(folder), folder)
    assert named.name == "llama3" and "differs from 'llama3'" in named.warnings[0]


def test_catalog_instruct_and_base() -> None:
    instruct = choose_template("auto", "meta-llama/Llama-3.1-8B-Instruct")
    assert instruct.name == "llama3_1" and "catalog" in instruct.reason
    base = choose_template("auto", "meta-llama/Llama-3.1-8B")
    assert base.name == "text" and "base model" in base.reason


def test_unknown_model_without_template_falls_back_with_a_warning(tmp_path: Path) -> None:
    folder = _model_dir(tmp_path, None)
    choice = choose_template("auto", str(folder), folder)
    assert choice.name == "text" and choice.warnings


def test_a_model_specific_eos_is_a_stop_string() -> None:
    """stablelm-zephyr uses the zephyr turns but ends replies with <|endoftext|>, not </s>."""
    choice = choose_template("auto", "stabilityai/stablelm-zephyr-3b")
    assert choice.name == "zephyr" and choice.stop_strings[0] == "<|endoftext|>"
    text = choice.template.render([{"role": "user", "content": "Hi"}], model=choice.entry).text
    assert text == "<|user|>\nHi<|endoftext|>\n"
