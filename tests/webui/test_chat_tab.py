"""The Chat tab on its own Blocks (the Studio contract), driven by gradio_client and by a real browser:
load the demo model + trained adapter in a worker process, compare base and adapter side by side, survive a
killed worker, and show a reasoning block collapsed."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.webui.conftest import free_port, shot
from tests.webui.test_browser import set_slider

GREEDY = dict(temperature=0, top_p=1, top_k=0, max_new=40, penalty=1, seed=-1)


@pytest.fixture(scope="module")
def studio_app(demo_adapter_run: Path):
    """A Blocks holding only the chat tab, launched on a free port; yields (url, studio)."""
    import gradio as gr

    from tunelab.webui.i18n import load_translations
    from tunelab.webui.studio import Studio
    from tunelab.webui.tabs import chat

    studio = Studio(runs_dir=demo_adapter_run.parent, translations=load_translations())
    with gr.Blocks() as demo:
        with gr.Tab(studio.t(chat.TITLE_KEY)):
            chat.build(studio)
    port = free_port()
    demo.queue().launch(server_port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/", studio
    studio.services["chat"].unload()
    demo.close()


def client(url: str):
    from gradio_client import Client

    return Client(url, verbose=False)


def load(url: str, run: Path | None, engine: str = "hf", base_url: str = "") -> tuple:
    return client(url).predict("demo", [str(run)] if run else [], engine, "auto", base_url, "", "", "auto", api_name="/chat_load")


def send(c, message: str, target: str, compare: bool) -> tuple:
    return c.predict(message, None, target, compare, "", *GREEDY.values(), api_name="/chat_send")  # no picture


def text_of(chatbot: list[dict]) -> list[tuple[str, str]]:
    return [(m["role"], "".join(part.get("text", "") for part in m["content"])) for m in chatbot]


def test_tab_module_imports_no_torch() -> None:
    code = ("import sys, gradio as gr; from pathlib import Path; from tunelab.webui.tabs import chat; "
            "from tunelab.webui.studio import Studio; from tunelab.webui.i18n import load_translations\n"
            "with gr.Blocks():\n    chat.build(Studio(Path('.'), load_translations()))\n"
            "print('torch' in sys.modules, 'transformers' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "False"]


def test_compare_mode_shows_base_and_adapter_side_by_side(studio_app, demo_adapter_run: Path) -> None:
    url, studio = studio_app
    job = client(url).submit("demo", [str(demo_adapter_run)], "hf", "auto", "", "", "", "auto", api_name="/chat_load")
    status, target, *_ = job.result(timeout=600)
    # while the worker starts, the status line counts the seconds (and shows the worker's last log line)
    waiting = [update[0] for update in job.outputs()[:-1]]
    assert len(waiting) >= 2 and all(re.search(r"^Loading demo with hf… \d+ s", line) for line in waiting[1:]), waiting
    assert f"Serving: demo, {demo_adapter_run.name}" in status and target["value"] == demo_adapter_run.name
    worker = studio.services["chat"].worker
    assert worker.alive() and worker.process.pid != os.getpid()  # the model lives in its own process
    c = client(url)
    tuned, base, *_, note, cleared = send(c, "Who are you?", demo_adapter_run.name, True)
    assert text_of(tuned)[0] == ("user", "Who are you?") and text_of(base)[0] == ("user", "Who are you?")
    assert "Tuna" in text_of(tuned)[1][1] and "Tuna" not in text_of(base)[1][1] and text_of(base)[1][1]
    assert "completion tokens" in note and cleared == ""
    # a second turn keeps both conversations; regenerate replaces the last answers; clear empties them
    tuned2, base2, *_ = send(c, "What can you do?", demo_adapter_run.name, True)
    assert len(tuned2) == 4 and text_of(base2)[2] == ("user", "What can you do?")  # (an empty answer is not drawn)
    again, base3, *_ = c.predict(demo_adapter_run.name, True, "", *GREEDY.values(), api_name="/chat_regenerate")
    assert text_of(again) == text_of(tuned2) and text_of(base3) == text_of(base2)  # greedy: same answers
    assert c.predict(api_name="/chat_clear")[0] == []


def test_killed_worker_is_reported_and_the_studio_survives(studio_app, demo_adapter_run: Path) -> None:
    url, studio = studio_app
    load(url, demo_adapter_run)
    os.kill(studio.services["chat"].worker.process.pid, signal.SIGKILL)
    *_, note, _ = send(client(url), "Who are you?", demo_adapter_run.name, False)
    assert "killed by SIGKILL" in note
    status, *_ = load(url, demo_adapter_run)  # the studio still works: load again and chat
    assert "Serving:" in status
    tuned, *_ = send(client(url), "Who are you?", demo_adapter_run.name, False)
    assert "Tuna" in text_of(tuned)[1][1]


def test_load_errors_are_shown(studio_app) -> None:
    url, _ = studio_app
    status, *_ = client(url).predict("./no/such/model", [], "hf", "auto", "", "", "", "auto", api_name="/chat_load")
    assert "Error:" in status and "is not a folder here" in status


def test_browser_compare(studio_app, browser, demo_adapter_run: Path) -> None:
    from playwright.sync_api import expect

    url, studio = studio_app
    studio.services["chat"].unload()
    page = browser.new_page(viewport={"width": 1400, "height": 1300})
    page.goto(url)
    adapters = page.locator("#chat_adapter input")
    adapters.click()
    adapters.fill(str(demo_adapter_run))
    adapters.press("Enter")
    page.locator("#chat_load").click()
    expect(page.locator("#chat_status")).to_contain_text(f"Serving: demo, {demo_adapter_run.name}", timeout=180_000)
    page.locator("#chat_compare input").check()
    page.locator("#chat_sampling").get_by_text("Sampling").click()
    set_slider(page, "chat_temperature", "0")
    page.locator("#chat_input textarea").fill("Who are you?")
    page.locator("#chat_send").click()
    expect(page.locator("#chat_output")).to_contain_text("Tuna", timeout=120_000)
    expect(page.locator("#chat_status")).to_contain_text("demo:", timeout=120_000)  # both answers finished
    base = page.locator("#chat_output_base")
    expect(base).to_be_visible()
    expect(base).to_contain_text("Who are you?")
    assert "Tuna" not in base.inner_text()
    box_tuned, box_base = page.locator("#chat_output").bounding_box(), base.bounding_box()
    assert box_base["x"] + box_base["width"] <= box_tuned["x"] + 1  # side by side: base left, adapter right
    shot(page, "chat-compare")


class _ReasoningServer:
    """Stands in for a reasoning model behind an OpenAI-compatible server (none can run here): it streams
    reasoning_content deltas and then the answer, as vLLM with a reasoning parser does."""

    def __init__(self) -> None:
        import uvicorn
        from fastapi import FastAPI
        from fastapi.responses import StreamingResponse

        app = FastAPI()

        @app.get("/v1/models")
        def models() -> dict:
            return {"object": "list", "data": [{"id": "thinker", "object": "model", "created": 0, "owned_by": "test"}]}

        @app.post("/v1/chat/completions")
        def completions() -> StreamingResponse:
            deltas = [{"role": "assistant", "content": ""}, {"reasoning_content": "SECRET-THOUGHT about "},
                      {"reasoning_content": "the question."}, {"content": "VISIBLE-ANSWER."}]
            chunks = [{"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "thinker",
                       "choices": [{"index": 0, "delta": d, "finish_reason": None}]} for d in deltas]
            chunks[-1]["choices"][0]["finish_reason"] = "stop"
            body = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
            return StreamingResponse(iter([body]), media_type="text/event-stream")

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, port=self.port, log_level="warning"))
        threading.Thread(target=self.server.run, daemon=True).start()
        while not self.server.started:
            time.sleep(0.05)


def test_reasoning_block_is_collapsed(studio_app, browser) -> None:
    from playwright.sync_api import expect

    url, studio = studio_app
    remote = _ReasoningServer()
    try:
        status, target, *_ = load(url, None, engine="openai", base_url=f"http://127.0.0.1:{remote.port}/v1")
        assert "Serving: thinker" in status
        page = browser.new_page(viewport={"width": 1400, "height": 1300})
        page.goto(url)
        expect(page.locator("#chat_status")).to_contain_text("Serving: thinker", timeout=30_000)
        page.locator("#chat_input textarea").fill("Why?")
        page.locator("#chat_send").click()
        output = page.locator("#chat_output")
        expect(output).to_contain_text("VISIBLE-ANSWER.", timeout=60_000)
        expect(output).to_contain_text("Reasoning")
        expect(output.get_by_text("SECRET-THOUGHT about the question.")).to_be_hidden()
        output.get_by_text("Reasoning").click()
        expect(output.get_by_text("SECRET-THOUGHT about the question.")).to_be_visible()
    finally:
        studio.services["chat"].unload()
        remote.server.should_exit = True
