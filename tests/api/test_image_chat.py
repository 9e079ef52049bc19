"""Image chat end to end: `tunelab api` (a real subprocess) on the demo VLM + a LoRA adapter, driven by the official
openai client with image_url parts (data: and file: URLs); its answers equal plain transformers + peft generating from
the same picture. Also `tunelab chat --image` through the openai engine, and the refusals (remote URL, unreadable
image, a text-only model)."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest

from tests.conftest import VLM_PICTURE as PICTURE
from tests.conftest import VLM_QUESTION as QUESTION


@pytest.fixture(scope="module")
def vlm_server(demo_vlm_dir: Path, vlm_adapter_dir: Path, tmp_path_factory: pytest.TempPathFactory, request):
    """`tunelab api --model demo-vlm --adapter DIR --port 0`; yields its base URL."""
    folder = tmp_path_factory.mktemp("vlm-api")
    ready, log = folder / "ready.json", folder / "api.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "tunelab.cli", "api", "--model", "demo-vlm", "--adapter", f"tuned={vlm_adapter_dir}",
             "--port", "0", "--ready-file", str(ready)], stdout=out, stderr=subprocess.STDOUT,
        )
    request.getfixturevalue("vlm_answers")  # the reference answers are computed while the server loads
    deadline = time.time() + 300
    while not ready.is_file():
        assert process.poll() is None and time.time() < deadline, log.read_text()[-3000:]
        time.sleep(0.2)
    yield f"http://127.0.0.1:{json.loads(ready.read_text())['port']}/v1"
    process.terminate()
    assert process.wait(30) == 0, log.read_text()[-3000:]


def _ask(client: openai.OpenAI, model: str, url: str, **kwargs) -> str:
    parts = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": QUESTION}]
    response = client.chat.completions.create(model=model, messages=[{"role": "user", "content": parts}],
                                              temperature=0, max_tokens=12, **kwargs)
    return response.choices[0].message.content


@pytest.mark.slow
def test_api_answers_image_parts_like_transformers(vlm_server: str, vlm_answers: dict[str, str], request) -> None:
    client = openai.OpenAI(base_url=vlm_server, api_key="none", max_retries=0)
    request.addfinalizer(client.close)  # no idle keep-alive connection holds the server's shutdown
    data_url = "data:image/png;base64," + base64.b64encode(PICTURE.read_bytes()).decode()
    for model in ("tuned", "demo-vlm"):
        assert _ask(client, model, data_url).strip() == vlm_answers[model]
    assert _ask(client, "tuned", PICTURE.as_uri()).strip() == vlm_answers["tuned"]
    with pytest.raises(openai.BadRequestError, match=r"content\[0\]\.image_url\.url: remote URLs are not fetched"):
        _ask(client, "tuned", "https://example.com/cat.png")
    with pytest.raises(openai.BadRequestError, match="not a readable image"):
        _ask(client, "tuned", "data:image/png;base64," + base64.b64encode(b"not a png").decode())


def test_chat_cli_sends_the_image_through_the_openai_engine(vlm_server: str, vlm_answers: dict[str, str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tunelab.cli", "chat", "--engine", "openai", "--base-url", vlm_server, "--model", "tuned",
         "--image", str(PICTURE), "--prompt", QUESTION, "--temperature", "0", "--max-new-tokens", "12"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == vlm_answers["tuned"]
    missing = subprocess.run([sys.executable, "-m", "tunelab.cli", "chat", "--engine", "openai", "--base-url", vlm_server,
                              "--model", "tuned", "--image", "nope.png", "--prompt", "hi"], capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "--image: image" in missing.stderr and "nope.png: no such file" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_a_text_only_model_refuses_images(tiny_model_dir: Path) -> None:
    from tunelab.core.generation import InferenceError, SamplingParams
    from tunelab.core.media import user_message
    from tunelab.core.serving import EngineOptions
    from tunelab.services.inference import open_engine

    engine = open_engine(str(tiny_model_dir), [], EngineOptions(engine="hf"))
    name = engine.models()[0].id
    with pytest.raises(InferenceError, match="is a text-only model and takes no images"):
        engine.chat(name, [user_message("hi", [str(PICTURE)])], SamplingParams(max_new_tokens=2))
    assert list(engine.chat(name, [user_message("hi")], SamplingParams(max_new_tokens=2)))  # text still works
