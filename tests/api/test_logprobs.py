"""logprobs, echo and n on `tunelab api` (the session's real server, official openai client): generated and
prompt log-probabilities equal plain transformers' own, and lm-eval's `local-completions` model runs a
multiple-choice (log-likelihood) task against the server with the same results as lm-eval's HF model."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest

from tests.api.conftest import KEY
from tests.lm_eval_tasks import QA, write_choice_task

WHO = [{"role": "user", "content": "Who are you?"}]
PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def plain(demo_model_dir: Path):
    """The demo model and tokenizer in plain transformers (the reference)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(demo_model_dir).eval(), AutoTokenizer.from_pretrained(demo_model_dir)


def test_generated_and_prompt_logprobs_equal_transformers(client: openai.OpenAI, plain) -> None:
    import torch

    model, tokenizer = plain
    ids = tokenizer(PROMPT)["input_ids"]
    response = client.completions.create(model="demo", prompt=ids, max_tokens=6, temperature=0, logprobs=3, echo=True)
    lp = response.choices[0].logprobs
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=6, do_sample=False, output_logits=True,
                             return_dict_in_generate=True, pad_token_id=tokenizer.pad_token_id)
        full = out.sequences[0].tolist()
        forward = torch.log_softmax(model(out.sequences).logits[0].float(), dim=-1)
    assert len(lp.tokens) == len(full) == len(ids) + 6 and response.usage.prompt_tokens == len(ids)
    assert lp.tokens == [tokenizer.decode([t]) for t in full]
    assert response.choices[0].text == tokenizer.decode(full, skip_special_tokens=True)  # echo: prompt + completion
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    expected = [float(forward[i - 1, full[i]]) for i in range(1, len(full))]
    assert lp.token_logprobs[1:] == pytest.approx(expected, abs=1e-4)
    generated = [float(torch.log_softmax(step[0].float(), -1)[t]) for step, t in zip(out.logits, full[len(ids):])]
    assert lp.token_logprobs[len(ids):] == pytest.approx(generated, abs=1e-4)  # raw distribution, as generated
    for position in range(1, len(full)):
        top = lp.top_logprobs[position]
        best = forward[position - 1].topk(3)
        assert list(top.values())[:3] == pytest.approx(best.values.tolist(), abs=1e-4)
        assert set(top) >= {tokenizer.decode([i]) for i in best.indices.tolist()}
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(lp.tokens))]
    scored = client.completions.create(model="demo", prompt=ids, max_tokens=0, logprobs=0, echo=True)
    assert scored.choices[0].logprobs.token_logprobs == lp.token_logprobs[: len(ids)]  # max_tokens 0: the prompt only
    assert scored.usage.completion_tokens == 0 and scored.choices[0].text == PROMPT


def test_chat_logprobs_stream_and_not(client: openai.OpenAI, server) -> None:
    kwargs = dict(model=server[1], messages=WHO, temperature=0, max_tokens=30, logprobs=True, top_logprobs=2)
    response = client.chat.completions.create(**kwargs)
    content = response.choices[0].logprobs.content
    text = response.choices[0].message.content
    assert "Tuna" in text and len(content) == response.usage.completion_tokens
    assert "".join(e.token for e in content).startswith(text)  # the tokens spell the reply (plus a trailing EOS token)
    for entry in content:  # greedy: each chosen token is its step's likeliest, alternatives sorted
        assert entry.logprob == entry.top_logprobs[0].logprob and len(entry.top_logprobs) == 2
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob and bytes(entry.bytes).decode() == entry.token
    chunks = list(client.chat.completions.create(**kwargs, stream=True))
    streamed = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [(e.token, e.logprob) for e in streamed] == [(e.token, e.logprob) for e in content]
    plain = client.chat.completions.create(model=server[1], messages=WHO, temperature=0, max_tokens=30)
    assert plain.choices[0].logprobs is None and plain.choices[0].message.content == text


def test_stop_string_cuts_the_logprobs_too(client: openai.OpenAI, server) -> None:
    response = client.chat.completions.create(model=server[1], messages=WHO, temperature=0, max_tokens=30, stop=["Tuna"],
                                              logprobs=True)
    tokens = "".join(e.token for e in response.choices[0].logprobs.content)
    assert "Tuna" not in response.choices[0].message.content and tokens.startswith(response.choices[0].message.content)
    assert len(tokens) - len(response.choices[0].message.content) < len(" Tuna")  # no token after the stop string


def test_n_choices(client: openai.OpenAI) -> None:
    kwargs = dict(model="demo", messages=WHO, temperature=1.0, max_tokens=12, n=3, seed=7)
    first, again = client.chat.completions.create(**kwargs), client.chat.completions.create(**kwargs)
    texts = [c.message.content for c in first.choices]
    assert [c.index for c in first.choices] == [0, 1, 2] and texts == [c.message.content for c in again.choices]
    assert len(set(texts)) > 1  # each choice samples on its own
    single = client.chat.completions.create(**{**kwargs, "n": 1})
    assert single.choices[0].message.content == texts[0]  # choice 0 uses the request's seed
    assert first.usage.completion_tokens == sum(
        client.chat.completions.create(**{**kwargs, "n": 1, "seed": 7 + i}).usage.completion_tokens for i in range(3))
    assert first.usage.prompt_tokens == single.usage.prompt_tokens  # the prompt counts once
    chunks = list(client.chat.completions.create(**kwargs, stream=True))
    joined = {i: "".join(c.choices[0].delta.content or "" for c in chunks if c.choices and c.choices[0].index == i) for i in range(3)}
    assert [joined[i] for i in range(3)] == texts
    batch = client.completions.create(model="demo", prompt=[PROMPT, "Water boils at"], max_tokens=4, temperature=0, n=2)
    assert [c.index for c in batch.choices] == [0, 1, 2, 3]
    assert batch.choices[0].text == batch.choices[1].text != batch.choices[2].text == batch.choices[3].text




def test_lm_eval_loglikelihood_task_through_the_api(server, demo_model_dir: Path, demo_adapter_run: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """lm-eval's local-completions (echo + logprobs) against the adapter served by `tunelab api` gives the accuracy
    and per-choice log-likelihoods lm-eval's own HF model computes for base + adapter."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    task = str(write_choice_task(tmp_path, "tuna_pick", QA[:3]))
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    url, adapter = server
    args = (f"model={adapter},base_url={url}/completions,tokenizer={demo_model_dir},tokenizer_backend=huggingface,"
            "num_concurrent=1,max_retries=1,batch_size=2")
    remote = simple_evaluate(model="local-completions", model_args=args, tasks=[task], task_manager=TaskManager(include_defaults=False),
                             log_samples=True, bootstrap_iters=0)
    local = simple_evaluate(model=HFLM(pretrained=str(demo_model_dir), peft=str(demo_adapter_run / "adapter"), device="cpu",
                                       dtype="float32", batch_size=1),
                            tasks=[task], task_manager=TaskManager(include_defaults=False), log_samples=True, bootstrap_iters=0)
    acc = remote["results"]["tuna_pick"]["acc,none"]
    assert acc == local["results"]["tuna_pick"]["acc,none"] and 0 <= acc <= 1

    def lls(result: dict) -> list[float]:
        return [resp[0][0] for sample in result["samples"]["tuna_pick"] for resp in sample["resps"]]

    assert lls(remote) == pytest.approx(lls(local), abs=1e-3) and len(lls(remote)) == 9


def test_openai_engine_passes_logprobs_through(client: openai.OpenAI, server) -> None:
    """The `openai` engine (how tunelab talks to vllm serve or any server) relays logprobs and echoed prompt logprobs."""
    from tunelab.core.generation import SamplingParams
    from tunelab.engine.inference.remote import OpenAIEngine

    engine = OpenAIEngine(server[0], KEY)
    try:
        deltas = list(engine.complete("demo", PROMPT, SamplingParams(temperature=0, max_new_tokens=5, logprobs=2)))
        direct = client.completions.create(model="demo", prompt=PROMPT, max_tokens=5, temperature=0, logprobs=2).choices[0].logprobs
        relayed = [e for d in deltas for e in d.logprobs or []]
        assert [(e.token, e.logprob) for e in relayed] == list(zip(direct.tokens, direct.token_logprobs))
        assert [dict(e.top) for e in relayed] == direct.top_logprobs
        prompt = engine.prompt_logprobs("demo", PROMPT, 1)
        echoed = client.completions.create(model="demo", prompt=PROMPT, max_tokens=0, echo=True, logprobs=1).choices[0].logprobs
        assert [(e.token, e.logprob) for e in prompt] == list(zip(echoed.tokens, echoed.token_logprobs))
        chat = list(engine.chat("demo", WHO, SamplingParams(temperature=0, max_new_tokens=5, logprobs=1)))
        assert len([e for d in chat for e in d.logprobs or []]) == chat[-1].completion_tokens == 5
    finally:
        engine.close()
