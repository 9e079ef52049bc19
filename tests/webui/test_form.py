"""The schema-driven form and the data preview, without a server: every RunConfig field gets exactly one
component spec, form values round-trip to the config, the command preview re-parses to the same config, and
the preview marks exactly the text the loss is computed on."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from tunelab.core.config import RunConfig, load_config
from tunelab.webui import form, preview
from tunelab.webui.i18n import load_translations


def test_every_field_has_one_spec_and_a_label() -> None:
    specs = form.field_specs()
    names = [s.name for s in specs]
    assert sorted(names + list(form.HIDDEN)) == sorted(RunConfig.model_fields)
    assert len(set(names)) == len(names)
    by_name = {s.name: s for s in specs}
    assert by_name["learning_rate"].kind == "float" and by_name["learning_rate"].main
    assert by_name["lora_alpha"].kind == "int" and by_name["lora_alpha"].optional
    assert by_name["method"].choices == ("full", "freeze", "lora", "qlora")
    assert by_name["report_to"].kind == "multichoice"
    assert by_name["packing"].kind == "bool" and not by_name["packing"].main
    assert by_name["learning_rate"].description == RunConfig.model_fields["learning_rate"].description
    table = load_translations().table
    assert [n for n in names if f"field.{n}" not in table] == []


def test_form_values_round_trip_and_the_command_reproduces_the_config() -> None:
    specs = form.field_specs()
    config = RunConfig(model="demo", dataset=["identity", "alpaca_demo"], learning_rate=3e-3, max_steps=40, lora_alpha=32,
                       report_to=[], system_prompt="Be brief.", packing=True)
    values = form.config_to_values(specs, config)
    assert values[[s.name for s in specs].index("learning_rate")] == "0.003"  # number fields are text boxes
    again, error = form.validate(form.form_to_mapping(specs, values))
    assert error == "" and again == config
    command = form.command_preview(config)
    assert command.startswith("tunelab train model=demo stage=sft method=lora lora_alpha=32 dataset=identity,alpaca_demo ")
    assert "'system_prompt=Be brief.'" in command and "report_to=none" in command
    assert load_config(None, shlex.split(command)[2:]) == config
    assert "learning_rate: 0.003" in form.yaml_preview(config)


def test_invalid_values_give_the_schema_message() -> None:
    specs = form.field_specs()
    values = form.config_to_values(specs, RunConfig())
    values[[s.name for s in specs].index("learning_rate")] = "-1"
    config, error = form.validate(form.form_to_mapping(specs, values))
    assert config is None
    assert "learning_rate: -1.0 is not valid" in error and "greater than 0" in error
    assert form.bad_fields(error) == ["learning_rate"]


def test_a_number_field_without_a_number_is_refused_never_defaulted() -> None:
    import pytest

    from tunelab.core.config import ConfigError

    specs = form.field_specs()
    index = {s.name: i for i, s in enumerate(specs)}
    for field, typed, says in (("learning_rate", "abc", "'abc' is not a number"), ("learning_rate", "", "empty"),
                               ("num_epochs", "inf", "not a finite number"), ("max_steps", "3.5", "not a whole number"),
                               ("learning_rate", "nan", "not a finite number")):
        values = form.config_to_values(specs, RunConfig())
        values[index[field]] = typed
        with pytest.raises(ConfigError, match=says) as caught:
            form.form_to_mapping(specs, values)
        assert form.bad_fields(str(caught.value)) == [field]
    values = form.config_to_values(specs, RunConfig())
    values[index["learning_rate"]], values[index["max_steps"]], values[index["lora_alpha"]] = " 1e-4 ", "2e1", ""
    mapping = form.form_to_mapping(specs, values)
    assert (mapping["learning_rate"], mapping["max_steps"], mapping["lora_alpha"]) == (1e-4, 20, None)


def _trained(segments: list[tuple[str, str | None]]) -> list[str]:
    return [text for text, label in segments if label]


def test_preview_marks_the_assistant_replies_of_the_chosen_template() -> None:
    result = preview.render_examples(model="demo", template="chatml", stage="sft", datasets=["identity"], label="T", limit=2)
    text = "".join(t for t, _ in result.segments)
    assert text.count("<|im_start|>user\n") == 2
    first = json.loads((Path(__file__).resolve().parents[2] / "data" / "identity.json").read_text())[0]
    assert _trained(result.segments)[0] == f"{first['output']}<|im_end|>"
    assert all("<|im_start|>user" not in t for t in _trained(result.segments))
    everything = preview.render_examples(model="demo", template="chatml", stage="sft", datasets=["identity"],
                                         label="T", limit=1, train_on_prompt=True)
    assert [label for _, label in everything.segments] == ["T"]


def test_mask_history_keeps_only_the_last_reply(tmp_path: Path) -> None:
    data = tmp_path / "chat.jsonl"
    messages = [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"},
                {"role": "user", "content": "Q2"}, {"role": "assistant", "content": "A2"}]
    data.write_text(json.dumps({"messages": messages}) + "\n")
    both = preview.render_examples(model="demo", template="chatml", stage="sft", datasets=[str(data)], label="T")
    last = preview.render_examples(model="demo", template="chatml", stage="sft", datasets=[str(data)], label="T", mask_history=True)
    assert _trained(both.segments) == ["A1<|im_end|>", "A2<|im_end|>"]
    assert _trained(last.segments) == ["A2<|im_end|>"]


def test_preview_reports_problems_instead_of_failing() -> None:
    assert "not in" in preview.render_examples(model="demo", template="auto", stage="sft", datasets=["nope"]).note
    assert "unknown template 'chatmlx'" in preview.render_examples(model="demo", template="chatmlx", stage="sft", datasets=["identity"]).note
    hub = preview.render_examples(model="demo", template="auto", stage="sft", datasets=["alpaca_en"])
    assert hub.segments == [] and "hub dataset" in hub.note
    text = preview.render_examples(model="demo", template="auto", stage="pt", datasets=["text_demo"], label="T", limit=1)
    assert len(text.segments) == 1 and text.segments[0][1] == "T"


def test_auto_template_names_what_it_resolves_to(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TUNELAB_HOME", str(tmp_path))  # the demo model is not built here
    choice = preview.resolve_template("auto", "demo")
    assert choice.name == "chatml" and "demo" in choice.reason
    hub = preview.resolve_template("auto", "Qwen/Qwen2.5-7B-Instruct")
    assert hub.name == "qwen2_5" or "catalog" in hub.reason
