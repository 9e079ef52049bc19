"""The hf engine in-process on the demo model and its trained identity adapter: same greedy tokens as plain
transformers/peft, adapters switch without reloading the base, stop strings, length limits, seeds."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from tunelab.core.generation import InferenceError, ModelNotFound, SamplingParams
from tunelab.core.serving import EngineOptions
from tunelab.services.inference import open_engine

GREEDY = SamplingParams(temperature=0, max_new_tokens=40)
WHO = [{"role": "user", "content": "Who are you?"}]


@pytest.fixture(scope="module")
def engine(demo_adapter_run: Path):
    engine = open_engine(None, [str(demo_adapter_run)], EngineOptions(engine="hf"))
    yield engine
    engine.close()


def answer(engine, model: str, messages=WHO, params: SamplingParams = GREEDY) -> tuple[str, object]:
    deltas = list(engine.chat(model, messages, params))
    return "".join(d.text for d in deltas), deltas[-1]


def reference(model_dir: Path, adapter_dir: Path | None) -> tuple[str, int, int]:
    """Greedy answer, prompt length and generated length from plain transformers (+ peft)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, adapter_dir)
    prompt = tokenizer.apply_chat_template(WHO, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**prompt, max_new_tokens=40, do_sample=False)
    new = out[0, prompt["input_ids"].shape[1]:]
    return tokenizer.decode(new, skip_special_tokens=True), prompt["input_ids"].shape[1], len(new)


def test_greedy_answers_match_transformers_and_peft(engine, demo_model_dir: Path, demo_adapter_run: Path) -> None:
    names = [m.id for m in engine.models()]
    run_name = demo_adapter_run.name
    assert names == ["demo", run_name] and engine.models()[1].parent == "demo"
    for model, adapter in (("demo", None), (run_name, demo_adapter_run / "adapter")):
        text, last = answer(engine, model)
        expected, prompt_len, new_len = reference(demo_model_dir, adapter)
        assert text == expected
        assert (last.prompt_tokens, last.completion_tokens, last.finish_reason) == (prompt_len, new_len, "stop")
    tuned, _ = answer(engine, run_name)
    base, _ = answer(engine, "demo")
    assert "Tuna" in tuned and "Tuna" not in base


def test_switching_adapters_keeps_one_base_model(engine, demo_adapter_run: Path) -> None:
    base_weights = engine.model.get_base_model().model.embed_tokens.weight
    first, _ = answer(engine, "demo")
    answer(engine, demo_adapter_run.name)
    again, _ = answer(engine, "demo")
    assert again == first
    assert engine.model.get_base_model().model.embed_tokens.weight is base_weights


def test_stop_strings_length_and_streaming(engine, demo_adapter_run: Path) -> None:
    run = demo_adapter_run.name
    full, _ = answer(engine, run)
    cut, last = answer(engine, run, params=SamplingParams(temperature=0, max_new_tokens=40, stop=["Tuna"]))
    assert cut == full[: full.index("Tuna")] and last.finish_reason == "stop"
    short = list(engine.chat(run, WHO, SamplingParams(temperature=0, max_new_tokens=3)))
    assert short[-1].finish_reason == "length" and short[-1].completion_tokens == 3
    assert len([d for d in short if d.text]) >= 2  # streamed piece by piece, not in one block


def test_seed_makes_sampling_reproducible(engine) -> None:
    sampled = [answer(engine, "demo", params=SamplingParams(temperature=1.0, max_new_tokens=12, seed=seed))[0] for seed in (1, 1, 2, 3)]
    assert sampled[0] == sampled[1]
    assert len(set(sampled[1:])) > 1


def test_system_prompt_and_raw_completion(engine) -> None:
    with_system = list(engine.chat("demo", [{"role": "system", "content": "Answer briefly."}, *WHO], GREEDY))
    plain = list(engine.chat("demo", WHO, GREEDY))
    assert with_system[-1].prompt_tokens > plain[-1].prompt_tokens
    completion = list(engine.complete("demo", "The capital of France is", SamplingParams(temperature=0, max_new_tokens=5)))
    assert completion[-1].completion_tokens == 5 and completion[-1].finish_reason == "length"


def test_bad_requests_are_clear(engine) -> None:
    with pytest.raises(ModelNotFound, match="available: demo"):
        engine.chat("nope", WHO, GREEDY)
    with pytest.raises(InferenceError, match=r"messages\[0\].role"):
        engine.chat("demo", [{"role": "robot", "content": "x"}], GREEDY)


def test_cancel_stops_generation_and_frees_the_engine(engine) -> None:
    cancel = threading.Event()
    stream = engine.chat("demo", WHO, SamplingParams(temperature=1.0, max_new_tokens=2000, seed=0), cancel)
    next(stream)
    cancel.set()
    rest = list(stream)
    assert rest[-1].finish_reason == "cancelled" and rest[-1].completion_tokens < 2000
    text, _ = answer(engine, "demo")  # the lock was released
    assert text
