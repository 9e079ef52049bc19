"""The Evaluate and Export tabs build their option widgets from EvalConfig / ExportConfig: every widget starts at
the schema's default (read back through the same cleaning the tab applies before validating), offers the schema's
choices, and every schema field is either a widget or left out for a stated reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunelab.core.eval_config import EvalConfig
from tunelab.core.export_config import ExportConfig

# Fields with no widget, and why (a new schema field must land in a tab or here).
NOT_IN_TAB = {
    "run": "the run picker", "model": "the tab evaluates/exports a run", "adapter": "the tab evaluates/exports a run",
    "output_dir": "the job folder is chosen by the studio", "dataset_dir": "the run's own registry",
    "reward_funcs": "the run's own reward functions", "template": "the run's template",
    "trust_remote_code": "not offered in the studio", "push_to_hub": "needs a network and a token",
}


@pytest.fixture(scope="module")
def tabs(tmp_path_factory: pytest.TempPathFactory):
    import gradio as gr

    from tunelab.webui.i18n import load_translations
    from tunelab.webui.studio import Studio
    from tunelab.webui.tabs import evaluate, export

    studio = Studio(runs_dir=Path(tmp_path_factory.mktemp("runs")), translations=load_translations())
    built = {}
    with gr.Blocks():
        for module in (evaluate, export):
            with gr.Tab(module.TITLE_KEY):
                module.build(studio)
            built[module] = module.options()
            built[module].widgets = {name: studio.components[f"{built[module].prefix}_{name}"] for name in built[module].names}
    return built


@pytest.mark.parametrize(("tab", "schema"), [("evaluate", EvalConfig), ("export", ExportConfig)])
def test_every_tab_default_is_the_schema_default(tabs, tab: str, schema) -> None:
    fields = next(f for module, f in tabs.items() if module.__name__.endswith(tab))
    shown = fields.mapping([widget.value for widget in fields.inputs()])
    defaults = {name: schema.model_fields[name].default for name in fields.names}
    assert shown == defaults
    for spec in fields.specs:
        widget = fields.widgets[spec.name]
        if spec.kind == "choice" and spec.name != "gguf":
            assert [value for _, value in widget.choices] == list(spec.choices), spec.name
        assert widget.info, f"{spec.name}: no help text"
    missing = set(schema.model_fields) - set(fields.names) - set(NOT_IN_TAB)
    assert not missing, f"{tab} tab: fields neither shown nor left out on purpose: {missing}"


def test_the_form_refuses_what_the_schema_refuses(tabs) -> None:
    from tunelab.core.config import ConfigError

    fields = next(f for module, f in tabs.items() if module.__name__.endswith("evaluate"))
    values = [widget.value for widget in fields.inputs()]
    values[fields.names.index("max_samples")] = "lots"
    with pytest.raises(ConfigError, match="max_samples: 'lots' is not a number"):
        fields.mapping(values)
