"""`tunelab eval` and `tunelab export` take their options from EvalConfig / ExportConfig: defaults cannot drift."""

from __future__ import annotations

import pytest

from tunelab.cli import build_parser
from tunelab.cli import evaluate, export
from tunelab.core.eval_config import EvalConfig
from tunelab.core.export_config import ExportConfig


def _subparser(name: str):
    parser = build_parser()
    return next(a for a in parser._subparsers._group_actions if a.dest == "command").choices[name]


@pytest.mark.parametrize(("command", "module", "schema", "names"), [
    ("eval", evaluate, EvalConfig, evaluate.FLAGS),
    ("export", export, ExportConfig, export.SOURCE + export.OPTIONS),
])
def test_every_cli_default_is_the_schema_default(command, module, schema, names) -> None:
    sub = _subparser(command)
    args = sub.parse_args(["--run", "runs/x"])
    config = module.config_from_args(args)
    for name in names:
        if name != "run":
            assert getattr(config, name) == schema.model_fields[name].default, name
    helps = {a.dest: a.help for a in sub._actions}
    for name in names:
        field = schema.model_fields[name]
        assert field.description in helps[name]
        if isinstance(field.default, int | str) and not isinstance(field.default, bool) and field.default != "":
            assert f"(default: {field.default})" in helps[name]


def test_flags_set_the_schema_fields() -> None:
    args = _subparser("export").parse_args(["--run", "r", "--no-verify", "--dtype", "fp16", "--shard-size", "1GB"])
    config = export.config_from_args(args)
    assert (config.verify, config.dtype, config.shard_size) == (False, "fp16", "1GB")
    args = _subparser("eval").parse_args(["--run", "r", "--no-base", "--max-samples", "7", "--metrics", "loss,predict"])
    config = evaluate.config_from_args(args)
    assert (config.compare_base, config.max_samples, config.metrics) == (False, 7, ["loss", "predict"])
    with pytest.raises(SystemExit):
        _subparser("export").parse_args(["--run", "r", "--dtype", "int3"])  # choices come from the schema's Literal


def test_export_serve_check_without_vllm_is_refused_before_any_work(tmp_path, monkeypatch, capsys) -> None:
    from tunelab.cli import main
    from tunelab.core import serving

    monkeypatch.delenv("TUNELAB_VLLM_PYTHON", raising=False)
    monkeypatch.setattr(serving, "vllm_importable", lambda: False)  # as on a machine without vLLM
    assert main(["export", "--model", "demo", "--out", str(tmp_path / "out"), "--serve-check"]) == 2
    assert "serve_check: needs vLLM" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
