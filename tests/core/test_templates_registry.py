"""The registry's own rules: valid files, distinct families, parity with transformers' renderer, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tunelab.core.chat_render import TemplateRefusal
from tunelab.core.templates import TemplateFileError, load_registry, registry

PROBES = [
    ([{"role": "user", "content": "Hi"}], True),
    ([{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"}], False),
    (
        [
            {"role": "system", "content": "S"},
            {"role": "user", "content": "Q1"},
            {"role": "assistant", "content": "A1"},
            {"role": "user", "content": "Q2"},
        ],
        True,
    ),
    ([{"role": "user", "content": " x\n"}, {"role": "assistant", "content": " y \n"}], False),
    ([{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"}, {"role": "user", "content": "Q2"}], False),
]
TOOLS = [{"type": "function", "function": {"name": "get_time", "description": "Current time", "parameters": {"type": "object", "properties": {}}}}]
# Families may differ only in what they do with tools or reasoning; those probes tell them apart too.
EXTRA_PROBES = [
    ([{"role": "user", "content": "What time is it?"}], True, {"tools": TOOLS}),
    ([{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A", "reasoning_content": "R"}], False, {}),
    ([{"role": "user", "content": "Q"}], True, {"enable_thinking": False}),
]


def _render_all(template) -> tuple:
    out = []
    for messages, gen, kwargs in [(m, g, {}) for m, g in PROBES] + EXTRA_PROBES:
        try:
            out.append(template.render(messages, gen, **kwargs).text)
        except TemplateRefusal as exc:
            out.append(f"refused: {exc}")
    return tuple(out)


def test_families_are_distinct() -> None:
    """Two families that render every probe identically are one family listed twice."""
    seen: dict[tuple, str] = {}
    clashes = []
    for name, template in registry().templates.items():
        key = _render_all(template)
        if key in seen:
            clashes.append(f"{name} == {seen[key]}")
        seen[key] = name
    assert not clashes, clashes


def test_same_string_as_transformers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each family's Jinja renders the same through transformers, i.e. what is trained is what is served."""
    from transformers.utils.chat_template_utils import render_jinja_template

    monkeypatch.setenv("TUNELAB_TEMPLATE_DATE", "today")
    mismatches = []
    for name, template in registry().templates.items():
        tokens = {"bos_token": template.bos_token or "", "eos_token": template.eos_token or ""}
        for messages, gen in PROBES:
            try:
                ours = template.render(messages, gen).text
            except TemplateRefusal:
                continue
            theirs, _ = render_jinja_template(
                conversations=[messages], chat_template=template.source, add_generation_prompt=gen,
                **tokens, **template.render_kwargs,
            )
            if theirs[0] != ours:
                mismatches.append(name)
                break
    assert not mismatches, mismatches


def test_spans_cover_assistant_content() -> None:
    for name, template in registry().templates.items():
        messages, gen = PROBES[1]
        try:
            rendered = template.render(messages, gen, track_spans=True)
        except TemplateRefusal:
            continue
        if "A1" not in rendered.text:  # classifier formats that drop the reply (e.g. Llama Guard 3 1B)
            continue
        spans = [rendered.text[a:b] for a, b in rendered.spans]
        assert len(spans) == 1 and "A1" in spans[0] and "Q1" not in spans[0], (name, spans)


def _write(directory: Path, name: str, body: str) -> None:
    (directory / f"{name}.yaml").write_text(body, encoding="utf-8")


GOOD = """name: {name}
models: [{model}]
turns:
  user: "U:{{content}}\\n"
  assistant: "A:{{content}}</s>"
  generation: "A:"
"""


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"a": GOOD.format(name="a", model="x/a") + "colour: red\n"}, "colour"),
        ({"a": GOOD.format(name="b", model="x/a")}, "must match the file name"),
        ({"a": GOOD.format(name="a", model="x/m"), "b": GOOD.format(name="b", model="x/m")}, "listed by both"),
        ({"a": "name: a\nturns:\n  user: u\n  assistant: '{content}'\n  generation: ''\njinja: x\n"}, "exactly one"),
        ({"a": "name: a\njinja: '{{ messages }}'\n"}, "generation"),
    ],
)
def test_loader_rejects_bad_files(tmp_path: Path, files: dict[str, str], message: str) -> None:
    for name, body in files.items():
        _write(tmp_path, name, body)
    with pytest.raises(TemplateFileError, match=message):
        load_registry(tmp_path)


def _cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tunelab.cli", *args], capture_output=True, text=True, input=stdin)


def test_cli_render_exact_and_exit_codes(tmp_path: Path) -> None:
    messages = tmp_path / "m.json"
    messages.write_text(json.dumps([{"role": "user", "content": "Hi"}]))
    ok = _cli("templates", "render", "--template", "chatml", "--messages", str(messages), "--generation-prompt")
    assert ok.returncode == 0 and ok.stdout == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    unknown = _cli("templates", "render", "--model", "meta-llama/Llama-2-7b-chat", "--messages", str(messages))
    assert unknown.returncode == 2 and "meta-llama/Llama-2-7b-chat-hf" in unknown.stderr
    messages.write_text(json.dumps([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]))
    refused = _cli("templates", "render", "--template", "llama2", "--messages", str(messages))
    assert refused.returncode == 3 and "alternate" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1


def test_cli_list_json() -> None:
    listed = _cli("templates", "list", "--json")
    rows = json.loads(listed.stdout)
    assert {"name", "models"} <= set(rows[0]) and len(rows) == len(registry().templates)


GOLDEN = Path(__file__).resolve().parents[1] / "data" / "golden_templates"


def test_revisions_are_selectable_and_checked_by_their_own_vectors() -> None:
    """A vendor's earlier template stays selectable as family@date next to the current default, and each revision
    has its own vectors (rendered from that revision's official template) on which it differs from the current one."""
    from tunelab.core.templates import UnknownTemplate, split_revision

    reg = registry()
    revisions = [name for name in reg.names() if "@" in name]
    assert "mixtral@2023-12-11" in revisions and reg.revisions("mixtral") == ["mixtral", "mixtral@2023-12-11"]
    assert reg.revisions("mistral_v2") == reg.revisions("mixtral")  # through the family's alias
    assert reg.for_model("mistralai/Mixtral-8x7B-Instruct-v0.1").template.name == "mixtral"  # current is the default
    vectors = [json.loads(p.read_text(encoding="utf-8")) for p in GOLDEN.glob("*.json")]
    for name in revisions:
        own = [v for v in vectors if v.get("template") == name]
        assert own, f"{name}: no golden vectors of its own"
        current = reg.get(split_revision(name)[0])
        differs = []
        for case in own[0]["cases"].values():
            try:
                differs.append(current.render(case["messages"], case["add_generation_prompt"]).text != case.get("rendered"))
            except TemplateRefusal:
                differs.append("error" not in case)
        assert any(differs), f"{name} renders its vectors like the current {current.name}: not a revision"
    with pytest.raises(UnknownTemplate, match=r"its revisions: mixtral, mixtral@2023-12-11"):
        reg.get("mixtral@2020-01-01")


def test_a_model_folder_with_the_release_template_is_recognized_as_that_revision() -> None:
    from tunelab.core.template_choice import matching_families

    assert matching_families(registry().get("mixtral@2023-12-11")) == ["mixtral@2023-12-11"]


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"a@2024-01-01": GOOD.format(name="a@2024-01-01", model="x/a")}, "not a template family"),
        ({"a": GOOD.format(name="a", model="x/a"), "a@2024-01-01": GOOD.format(name="a@2024-01-01", model="x/b")}, "no models"),
        ({"a": GOOD.format(name="a@24-1-1", model="x/a")}, "name"),
    ],
)
def test_loader_rejects_bad_revisions(tmp_path: Path, files: dict[str, str], message: str) -> None:
    for name, body in files.items():
        _write(tmp_path, name, body)
    with pytest.raises(TemplateFileError, match=message):
        load_registry(tmp_path)
