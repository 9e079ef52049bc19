"""Tool calling on `tunelab api` with the official openai client: tools rendered through the template's own tool
support (qwen2_5, Hermes-style <tool_call> blocks), calls parsed back into `message.tool_calls` (stream and
non-stream), a tool result sent back, and a clear 400 for a template without tool support.

The model is the demo model with its output layer fitted here (plain torch, seconds) to answer one weather question with a
tool call and the tool's result with a sentence, so what the server returns is what a real model generated."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
RESULT = {"role": "tool", "tool_call_id": "call_1", "content": '{"sky": "sunny", "celsius": 21}'}
ANSWER = "It is sunny in Paris, 21 degrees."


def _train_tool_model(demo: Path, out: Path) -> Path:
    """Copy the demo model and fit its output layer to the two tool-calling replies rendered by the qwen2_5
    template (the layers below stay frozen, so their hidden states are computed once: a few seconds on CPU)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunelab.core.templates import registry

    template = registry().get("qwen2_5")
    shutil.copytree(demo, out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    conversations = [ASK + [{"role": "assistant", "content": "", "tool_calls": [CALL]}],
                     ASK + [{"role": "assistant", "content": "", "tool_calls": [CALL]}, RESULT, {"role": "assistant", "content": ANSWER}]]
    features, targets = [], []
    for messages in conversations:
        prompt = tokenizer(template.render(messages[:-1], add_generation_prompt=True, tools=TOOLS).text, add_special_tokens=False)["input_ids"]
        ids = tokenizer(template.render(messages, tools=TOOLS).text.rstrip("\n"), add_special_tokens=False)["input_ids"]
        assert ids[: len(prompt)] == prompt
        with torch.no_grad():
            hidden = model.model(input_ids=torch.tensor([ids])).last_hidden_state[0]
        features.append(hidden[len(prompt) - 1 : -1])  # the positions that predict the reply's tokens
        targets.append(torch.tensor(ids[len(prompt):]))
    x, y = torch.cat(features), torch.cat(targets)
    head = model.lm_head.weight
    optimizer = torch.optim.Adam([head], lr=1e-2)
    for _ in range(300):
        loss = torch.nn.functional.cross_entropy(x @ head.T, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert (x @ head.T).argmax(-1).eq(y).all(), loss.item()  # greedy decoding now writes exactly these replies
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def tool_server(demo_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("tools")
    model = _train_tool_model(demo_model_dir, folder / "model")
    ready, log = folder / "ready.json", folder / "api.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "tunelab.cli", "api", "--model", str(model), "--template", "qwen2_5", "--port", "0",
             "--ready-file", str(ready)], stdout=out, stderr=subprocess.STDOUT,
        )
    deadline = time.time() + 300
    while not ready.is_file():
        assert process.poll() is None and time.time() < deadline, log.read_text()[-3000:]
        time.sleep(0.2)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{json.loads(ready.read_text())['port']}/v1", api_key="none", max_retries=0)
    yield client, client.models.list().data[0].id
    process.terminate()
    assert process.wait(30) == 0, log.read_text()[-3000:]


def test_tool_call_comes_back_in_the_openai_shape(tool_server) -> None:
    client, model = tool_server
    response = client.chat.completions.create(model=model, messages=ASK, tools=TOOLS, temperature=0, max_tokens=60)
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    without = client.chat.completions.create(model=model, messages=ASK, temperature=0, max_tokens=8)
    assert without.usage.prompt_tokens < response.usage.prompt_tokens  # the tools were rendered into the prompt
    assert not without.choices[0].message.tool_calls and without.choices[0].finish_reason != "tool_calls"
    none = client.chat.completions.create(model=model, messages=ASK, tools=TOOLS, tool_choice="none", temperature=0, max_tokens=8)
    assert none.choices[0].message.tool_calls is None and "<tool_call>" in none.choices[0].message.content

    chunks = list(client.chat.completions.create(model=model, messages=ASK, tools=TOOLS, temperature=0, max_tokens=60, stream=True))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert not "".join(d.content or "" for d in deltas).strip()  # no call markup leaks into the streamed content
    (streamed,) = [t for d in deltas for t in d.tool_calls or []]
    assert streamed.index == 0 and streamed.function.name == "get_weather"
    assert json.loads(streamed.function.arguments) == {"city": "Paris"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_tool_result_round_trip(tool_server) -> None:
    """The assistant's call (arguments as a JSON string, as clients send them) and the tool's result go back in."""
    client, model = tool_server
    call = {**CALL, "function": {**CALL["function"], "arguments": json.dumps(CALL["function"]["arguments"])}}
    messages = [*ASK, {"role": "assistant", "content": None, "tool_calls": [call]}, RESULT]
    response = client.chat.completions.create(model=model, messages=messages, tools=TOOLS, temperature=0, max_tokens=40)
    assert response.choices[0].message.content == ANSWER and response.choices[0].finish_reason == "stop"


def test_template_without_tools_refuses_them(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="demo", messages=ASK, tools=TOOLS, max_tokens=4)
    body = caught.value.body
    assert body["param"] == "tools" and "'chatml'" in body["message"] and "qwen2_5" in body["message"]
    with pytest.raises(openai.BadRequestError) as forced:
        client.chat.completions.create(model="demo", messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=4)
    assert forced.value.body["param"] == "tool_choice"
