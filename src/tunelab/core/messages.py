"""Message lists as datasets write them -> canonical chat messages (the shape Hugging Face chat templates take).

Handles role/content key names ("tags": from/value/human/gpt for ShareGPT, role/content for OpenAI), tool use
(function_call and observation turns, OpenAI ``tool_calls`` and ``tool`` turns, a ``tools`` column holding JSON
schemas), typed content parts (``[{"type": "text", "value": ...}]``, reasoning and tool_call parts) and per-message
``loss_weight``. Media parts are refused: multimodal training does not exist yet.
"""

from __future__ import annotations

import json
from typing import Any

TAG_KEYS = ("role", "content", "user", "assistant", "system", "observation", "function")
SHAREGPT_TAGS = {"role": "from", "content": "value", "user": "human", "assistant": "gpt", "system": "system",
                 "observation": "observation", "function": "function_call"}
OPENAI_TAGS = {"role": "role", "content": "content", "user": "user", "assistant": "assistant", "system": "system",
               "observation": "tool", "function": "function_call"}
MEDIA_PARTS = ("image", "image_url", "video", "video_url", "audio", "audio_url", "input_audio")
MEDIA_COLUMNS = ("images", "videos", "audios")


def parse_messages(turns: Any, tags: dict[str, str], what: str = "messages") -> list[dict[str, Any]]:
    """Canonical messages from a dataset's list of turns; ValueError naming the turn and the problem."""
    if not isinstance(turns, list) or not turns:
        raise ValueError(f"{what} must be a non-empty list of messages")
    roles = {tags["user"]: "user", tags["assistant"]: "assistant", tags["system"]: "system",
             tags["observation"]: "tool", tags["function"]: "function", "tool": "tool"}
    messages: list[dict[str, Any]] = []
    for index, turn in enumerate(turns, 1):
        if not isinstance(turn, dict):
            raise ValueError(f"{what} message {index} is not an object")
        tag = turn.get(tags["role"])
        if not isinstance(tag, str) or tag not in roles:
            raise ValueError(f"{what} message {index}: role {tag!r} is not one of {sorted(roles)}")
        messages.append(_message(roles[tag], turn, tags, f"{what} message {index}"))
    return messages


def _message(role: str, turn: dict, tags: dict[str, str], where: str) -> dict[str, Any]:
    weight = turn.get("loss_weight")
    if weight is not None and weight != (1.0 if role in ("assistant", "function") else 0.0):
        raise ValueError(f"{where}: loss_weight {weight!r} on a {role} turn is not supported "
                         "(assistant replies are trained, prompts are not)")
    content = turn.get(tags["content"])
    message: dict[str, Any] = {"role": role}
    calls = list(turn.get("tool_calls") or [])
    if isinstance(content, list):
        content, reasoning, part_calls = _parts(content, where)
        calls += part_calls
        if reasoning:
            message["reasoning_content"] = reasoning
    elif content is None and calls:
        content = ""
    if not isinstance(content, str):
        raise ValueError(f"{where}: content must be a string or a list of typed parts, got {type(content).__name__}")
    if role == "function":  # a ShareGPT function_call turn: the content is the call's JSON
        message["role"], calls, content = "assistant", [*calls, *_calls_from_json(content, where)], ""
    message["content"] = content
    if calls:
        if message["role"] != "assistant":
            raise ValueError(f"{where}: only assistant turns can hold tool calls")
        message["tool_calls"] = [_tool_call(call, where) for call in calls]
    return message


def _parts(parts: list, where: str) -> tuple[str, str, list]:
    """(text, reasoning, tool calls) of typed content parts."""
    text: list[Any] = []
    reasoning: list[Any] = []
    calls: list[Any] = []
    for number, part in enumerate(parts, 1):
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise ValueError(f"{where}: content part {number} must be an object with a 'type'")
        kind = part["type"]
        value = part.get("value", part.get(kind, part.get("text")))
        if kind in MEDIA_PARTS:
            raise ValueError(f"{where}: content part {number} is {kind!r}; multimodal training is not supported yet")
        if kind == "tool_call":
            calls += _calls_from_json(value, where) if isinstance(value, str) else [value]
            continue
        if not isinstance(value, str):
            raise ValueError(f"{where}: content part {number} ({kind}) must hold a string")
        if kind == "text":
            text.append(value)
        elif kind in ("reasoning", "thinking"):
            reasoning.append(value)
        else:
            raise ValueError(f"{where}: content part {number} has unknown type {kind!r}; valid: text, reasoning, tool_call")
    return "".join(text), "".join(reasoning), calls


def _calls_from_json(text: str, where: str) -> list:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise ValueError(f"{where}: a function call must be JSON like {{\"name\": ..., \"arguments\": {{...}}}}") from None
    return value if isinstance(value, list) else [value]


def _tool_call(call: Any, where: str) -> dict[str, Any]:
    """A call in the shape chat templates read: {"type": "function", "function": {"name", "arguments"}}."""
    body = call.get("function", call) if isinstance(call, dict) else None
    if not isinstance(body, dict) or not isinstance(body.get("name"), str):
        raise ValueError(f"{where}: a tool call needs a 'name' (got {json.dumps(call)[:80]})")
    arguments = body.get("arguments", {})
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            raise ValueError(f"{where}: tool call {body['name']!r} has arguments that are not JSON") from None
    return {"type": "function", "function": {"name": body["name"], "arguments": arguments}}


def parse_tools(value: Any, where: str = "tools") -> list[dict] | None:
    """The tool schemas of a row: a JSON string or a list of objects; None when the row has none."""
    if value is None or value == "" or value == []:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise ValueError(f"{where} must be JSON (a list of function schemas)") from None
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(tool, dict) for tool in value):
        raise ValueError(f"{where} must be a list of function schemas (objects)")
    return value or None


def check_order(messages: list[dict[str, Any]], *, ends_with: str = "assistant") -> list[dict[str, Any]]:
    """Check system? then user, assistant (with tool results after tool calls) ... ending with ``ends_with``."""
    body = messages[1:] if messages and messages[0]["role"] == "system" else messages
    if not body:
        raise ValueError("no user/assistant messages")
    previous = None
    for index, message in enumerate(body, 1):
        role = message["role"]
        allowed = _NEXT[previous if previous != "assistant" or not _calls(body[index - 2]) else "calls"]
        if role not in allowed:
            wanted = " or ".join(repr(r) for r in allowed)
            raise ValueError(f"wrong role order: message {index} is {role!r}, expected {wanted}")
        if role == "assistant" and not message["content"].strip() and not _calls(message):
            raise ValueError(f"empty assistant response in message {index}")
        previous = role
    if body[-1]["role"] != ends_with:
        raise ValueError(f"the conversation must end with {'an assistant response' if ends_with == 'assistant' else 'a user turn'}")
    return messages


def _calls(message: dict) -> bool:
    return bool(message.get("tool_calls"))


_NEXT = {None: ("user",), "user": ("assistant",), "assistant": ("user",), "calls": ("tool",),
         "tool": ("tool", "assistant")}


def has_tools(example: dict[str, Any]) -> bool:
    """Whether a canonical example uses tools (schemas, calls or results)."""
    return bool(example.get("tools")) or any(
        m.get("tool_calls") or m["role"] == "tool" for m in example.get("messages", ()))
