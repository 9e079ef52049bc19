"""Tool calls read back from reply text (core.tool_calls), and the registry's tool_parser data."""

from __future__ import annotations

import json

from tunelab.core.templates import registry
from tunelab.core.tool_calls import ToolStreamSplitter, split_tool_calls, tool_families


def test_hermes_and_xml_calls_parse_to_the_openai_shape() -> None:
    content, calls = split_tool_calls("hermes", 'Checking.\n<tool_call>\n{"name": "f", "arguments": {"x": 1}}\n</tool_call>\n'
                                                '<tool_call>\n{"name": "g", "arguments": {}}\n</tool_call>')
    assert content == "Checking." and [(c.name, json.loads(c.arguments)) for c in calls] == [("f", {"x": 1}), ("g", {})]
    xml = "<tool_call>\n<function=f>\n<parameter=city>\nNew York\n</parameter>\n<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>"
    content, calls = split_tool_calls("xml_function", xml)
    assert content is None and json.loads(calls[0].arguments) == {"city": "New York", "days": 3}
    broken = "<tool_call>\n{not json}\n</tool_call>"
    assert split_tool_calls("hermes", broken) == (broken, [])  # never drop the model's words
    assert split_tool_calls("hermes", "plain answer") == ("plain answer", [])


def test_stream_splitter_holds_a_call_back() -> None:
    splitter = ToolStreamSplitter("hermes")
    text = 'Sure <tool_call>\n{"name": "f", "arguments": {"a": "b"}}\n</tool_call>'
    streamed = "".join(splitter.feed(text[i : i + 3]) for i in range(0, len(text), 3))
    rest, calls = splitter.finish()
    assert streamed == "Sure " and rest == "" and calls[0].name == "f"
    plain = ToolStreamSplitter("hermes")
    assert plain.feed("a <tool") == "a " and plain.finish() == ("<tool", [])


def test_families_with_a_parser_render_tools() -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    reg = registry()
    for name in tool_families():
        template = reg.get(name)
        assert "tools" in template.quirks, name
        text = template.render([{"role": "user", "content": "hi"}], add_generation_prompt=True, tools=tools).text
        assert "get_weather" in text, name
