"""`tunelab api` as a real subprocess on the demo model + the trained identity adapter, driven by the official
openai client: models, chat (stream and non-stream), completions, usage, stop sequences, errors, API keys,
concurrency, client disconnects; and the `openai` engine (tunelab chat --engine openai) against it."""

from __future__ import annotations

import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest

from tests.api.conftest import KEY

WHO = [{"role": "user", "content": "Who are you?"}]


def chat(client: openai.OpenAI, model: str, **kwargs) -> tuple[str, object]:
    response = client.chat.completions.create(**{"model": model, "messages": WHO, "temperature": 0, "max_tokens": 40, **kwargs})
    return response.choices[0].message.content, response


def streamed(client: openai.OpenAI, model: str, **kwargs) -> tuple[str, list]:
    stream = client.chat.completions.create(
        model=model, messages=WHO, temperature=0, max_tokens=40, stream=True, stream_options={"include_usage": True}, **kwargs
    )
    chunks = list(stream)
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), chunks


def test_models_lists_base_and_adapter(client: openai.OpenAI, server) -> None:
    models = {m.id: m.model_extra.get("parent") for m in client.models.list()}
    assert models == {"demo": None, server[1]: "demo"}


def test_adapter_answers_differently_stream_and_not(client: openai.OpenAI, server, demo_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tuned, response = chat(client, server[1])
    base, _ = chat(client, "demo")
    assert "Tuna" in tuned and "Tuna" not in base
    prompt_len = len(AutoTokenizer.from_pretrained(demo_model_dir).apply_chat_template(WHO, add_generation_prompt=True, return_dict=True)["input_ids"])
    assert response.usage.prompt_tokens == prompt_len and response.usage.completion_tokens > 5
    assert response.usage.total_tokens == prompt_len + response.usage.completion_tokens
    assert response.choices[0].finish_reason == "stop" and response.object == "chat.completion"
    text, chunks = streamed(client, server[1])
    assert text == tuned
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 5  # really streamed
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == response.usage.completion_tokens


def test_stop_sequences_and_length(client: openai.OpenAI, server) -> None:
    full, _ = chat(client, server[1])
    cut, response = chat(client, server[1], stop=["Tuna"])
    assert cut == full[: full.index("Tuna")] and response.choices[0].finish_reason == "stop"
    text, chunks = streamed(client, server[1], stop="Tuna")
    assert text == cut
    _, short = chat(client, server[1], max_tokens=4)
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 4


def test_completions_endpoint(client: openai.OpenAI) -> None:
    response = client.completions.create(model="demo", prompt="The capital of France is", max_tokens=6, temperature=0)
    assert response.object == "text_completion" and response.choices[0].finish_reason == "length"
    assert response.usage.completion_tokens == 6 and response.choices[0].text
    stream = client.completions.create(model="demo", prompt="The capital of France is", max_tokens=6, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in stream if c.choices) == response.choices[0].text


@pytest.mark.parametrize(
    "kwargs, error, words, param",
    [
        ({"temperature": -1}, openai.BadRequestError, "temperature: -1", "temperature"),
        ({"n": 0}, openai.BadRequestError, "n: 0", "n"),
        ({"logprobs": True, "top_logprobs": 21}, openai.BadRequestError, "top_logprobs: 21", "top_logprobs"),
        ({"model": "no-such-model"}, openai.NotFoundError, "available: demo", "model"),
        ({"messages": []}, openai.BadRequestError, "at least 1 item", "messages"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, openai.BadRequestError, "'robot'", "messages[0].role"),
        ({"max_tokens": "many"}, openai.BadRequestError, "valid integer", "max_tokens"),
    ],
)
def test_bad_requests_get_openai_errors(client: openai.OpenAI, kwargs: dict, error: type, words: str, param: str) -> None:
    request = {"model": "demo", "messages": WHO, "max_tokens": 4, **kwargs}
    with pytest.raises(error) as caught:
        client.chat.completions.create(**request)
    body = caught.value.body
    assert words in body["message"] and body["type"] == "invalid_request_error" and body["param"] == param


def test_wrong_or_missing_key_is_refused(server) -> None:
    for key in ("wrong", ""):
        with pytest.raises(openai.AuthenticationError) as caught:
            openai.OpenAI(base_url=server[0], api_key=key or "none", max_retries=0).models.list()
        assert caught.value.status_code == 401 and caught.value.body["code"] == "invalid_api_key"


def test_concurrent_requests_are_queued_not_interleaved(client: openai.OpenAI, server) -> None:
    expected = {name: chat(client, name)[0] for name in ("demo", server[1])}
    jobs = [("demo", False), (server[1], True), ("demo", True), (server[1], False)] * 2
    with ThreadPoolExecutor(len(jobs)) as pool:
        results = list(pool.map(lambda job: (streamed if job[1] else chat)(client, job[0])[0], jobs))
    assert results == [expected[name] for name, _ in jobs]


def test_client_disconnect_mid_stream_frees_the_server(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(model="demo", messages=WHO, temperature=1.0, max_tokens=3000, stream=True)
    next(iter(stream))
    stream.close()
    started = time.time()
    text, _ = chat(client, "demo")
    assert text and time.time() - started < 60  # not stuck behind the abandoned 3000-token generation


def test_openai_engine_talks_to_it(server) -> None:
    url, adapter = server
    result = subprocess.run(
        [sys.executable, "-m", "tunelab.cli", "chat", "--engine", "openai", "--base-url", url, "--remote-api-key", KEY,
         "--use", adapter, "--prompt", "Who are you?", "--temperature", "0", "--max-new-tokens", "40"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "Tuna" in result.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "tunelab.cli", "chat", "--engine", "openai", "--base-url", url, "--remote-api-key", "wrong",
         "--prompt", "hi"], capture_output=True, text=True, timeout=120,
    )
    assert bad.returncode == 2 and "API key was refused" in bad.stderr and "Traceback" not in bad.stderr


def test_off_loopback_needs_a_key() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tunelab.cli", "api", "--model", "demo", "--host", "0.0.0.0", "--port", "0"],
        capture_output=True, text=True, timeout=60, env={**__import__("os").environ, "TUNELAB_API_KEY": ""},
    )
    assert result.returncode == 2 and "--api-key" in result.stderr and "Traceback" not in result.stderr
