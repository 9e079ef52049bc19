"""Fast preprocessing gives exactly what the straightforward path gives: the Rust backend called directly and
masks found by bisection equal the transformers call and the token-by-token walk; streaming in chunks over
several processes equals tokenizing the whole list in memory; the cache is keyed by the files' bytes."""

from __future__ import annotations

import json
import os
import pickle
import signal
from pathlib import Path

import pytest

from tests.engine.test_tokenize import CONVERSATION, _messages_for, _specials
from tests.tiny import tiny_tokenizer
from tunelab.core.chat_render import serving_source
from tunelab.core.config import RunConfig
from tunelab.core.template_choice import TemplateChoice
from tunelab.core.templates import ChatTemplate, registry
from tunelab.engine import prepare, tokenize
from tunelab.engine.tokenize import IGNORE, EncodeStats, encode_conversations, encode_texts

UNICODE = [  # multi-byte characters split into several byte tokens that share one character offset
    {"role": "user", "content": "Où est le café? 日本語で 🚀"},
    {"role": "assistant", "content": "Ici: naïve crème brûlée, 東京 🚀🚀."},
]


def _without_markers() -> ChatTemplate:
    """ChatML with its {% generation %} tags removed: masks come from prefix renders (a model's own template)."""
    chatml = registry().get("chatml")
    return chatml.model_copy(update={"name": "chatml_plain", "jinja": serving_source(chatml.source), "turns": None})


def _the_old_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tokenize through transformers' call with its offsets lists, masks by the token-by-token walk."""
    monkeypatch.setattr(tokenize, "_plain_backend", lambda tokenizer: None)
    monkeypatch.setattr(tokenize._Positions, "of", classmethod(lambda cls, offsets: None))


TEMPLATES = ["chatml", "llama3_1", "gemma3", "llama2", "deepseek_r1_distill", "chatml_plain"]


@pytest.mark.parametrize("name", TEMPLATES)
def test_fast_encoding_equals_the_old_path(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # gemma3 and llama2 fold the system prompt into the first user turn; llama2's "[/INST] " merges into the
    # reply's first word (the prompt is re-tokenized apart); deepseek_r1_distill strips history reasoning;
    # llama3_1 writes a date header; chatml_plain has no generation markers.
    template = _without_markers() if name == "chatml_plain" else registry().get(name)
    messages = _messages_for(template)
    tokenizer = tiny_tokenizer(_specials(template, messages), bos=template.bos_token or "<s>",
                               eos=template.eos_token or "</s>")
    assert tokenize.TokenEncoder(tokenizer).backend is not None, "the fast path is under test"
    assert tokenize.TokenEncoder(tokenizer).words is not None, "the word memo is under test"
    conversations = [messages, messages[:3] if messages[0]["role"] == "system" else messages[:2], UNICODE] * 3
    cutoff = min(len(row["input_ids"]) for row in encode_conversations(tokenizer, template, conversations,
                                                                        cutoff_len=4096)) - 1  # cuts some rows
    runs = []
    for old in (False, True):
        if old:
            _the_old_path(monkeypatch)
        for options in ({}, {"mask_history": True}, {"train_on_prompt": True}):
            stats = EncodeStats()
            rows = encode_conversations(tokenizer, template, conversations, cutoff_len=cutoff, stats=stats, **options)
            full = encode_conversations(tokenizer, template, conversations, cutoff_len=4096, **options)
            runs.append((rows, full, stats))
    assert runs[:3] == runs[3:]
    rows, full, stats = runs[0]
    assert stats.truncated > 0 and len(full) == len(conversations)


def test_pretraining_text_equals_the_old_path(monkeypatch: pytest.MonkeyPatch) -> None:
    tokenizer = tiny_tokenizer()
    texts = ["A river carries water.", "Où est le café? 🚀", "word " * 40]
    fast = encode_texts(tokenizer, texts, cutoff_len=30)
    _the_old_path(monkeypatch)
    assert fast == encode_texts(tokenizer, texts, cutoff_len=30)


def _dataset(folder: Path, rows: int) -> Path:
    """A ShareGPT JSONL file: multi-turn conversations, some with a system prompt (gemma2 refuses those)."""
    path = folder / "chats.jsonl"
    with path.open("w") as handle:
        for i in range(rows):
            turns = [{"from": "system", "value": f"Be brief, rule {i}."}] if i % 7 == 3 else []
            for t in range(1 + i % 3):
                turns += [{"from": "human", "value": f"Question {i}.{t}: what is {i} plus {t}?"},
                          {"from": "gpt", "value": f"It is {i + t}. " * (1 + (i * t) % 5)}]
            handle.write(json.dumps({"conversations": turns, "id": i}) + "\n")
    return path


def _setup(tmp_path: Path, template_name: str = "gemma2", rows: int = 30, **options):
    template = registry().get(template_name)
    tokenizer = tiny_tokenizer(_specials(template, CONVERSATION[1:]), bos=template.bos_token, eos=template.eos_token)
    config = RunConfig(dataset=[str(_dataset(tmp_path, rows))], template=template_name, cutoff_len=60, **options)
    return config, tokenizer, TemplateChoice(template, "test")


def _abort(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def test_streaming_in_processes_equals_in_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd) -> None:
    from tunelab.engine.data import load_reports, prepare_data, tokenize_reports

    config, tokenizer, choice = _setup(tmp_path, preprocessing_num_workers=2, max_samples=26)
    monkeypatch.setattr(prepare, "CHUNK", 4)  # 7 chunks over 2 worker processes
    pools: list[int] = []
    pool = prepare._pool
    monkeypatch.setattr(prepare, "_pool", lambda job, workers: pools.append(workers) or pool(job, workers))
    calls: list[tuple[int, int]] = []
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    for sig in handlers:  # what the trainer's StopRequest does before training: the workers must not inherit it
        signal.signal(sig, _abort)
    try:
        prepared = prepare_data(config, tokenizer, choice, progress=lambda done, total: calls.append((done, total)))
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    assert "Traceback" not in capfd.readouterr().err  # the workers ended quietly
    rows, stats = tokenize_reports(config, load_reports(config), tokenizer, choice)
    assert prepared.train.to_list() == rows and len(rows) > 10
    expected = stats.as_event() | {"ignored_columns": {"chats.jsonl:id": 30}}
    assert prepared.stats.as_event() == expected and prepared.stats.refusals == stats.refusals
    assert stats.refusals[0].startswith("example 4:") and any(r.startswith("example 25:") for r in stats.refusals)
    assert calls[0] == (0, 26) and calls[-1] == (26, 26) and pools == [2]


def test_num_samples_picks_the_same_examples_when_streamed(tmp_path: Path) -> None:
    from tunelab.engine.data import load_reports, prepare_data, tokenize_reports

    config, tokenizer, choice = _setup(tmp_path, "chatml", rows=20, preprocessing_num_workers=1)
    entry = {"file_name": "chats.jsonl", "formatting": "sharegpt", "num_samples": 7}  # LLaMA-Factory keys
    (tmp_path / "dataset_info.json").write_text(json.dumps({"chats": entry}))
    config = config.model_copy(update={"dataset": ["chats"], "dataset_dir": str(tmp_path)})
    rows, _ = tokenize_reports(config, load_reports(config), tokenizer, choice)
    assert prepare_data(config, tokenizer, choice).train.to_list() == rows and len(rows) == 7


def test_cache_is_keyed_by_the_files_bytes(tmp_path: Path) -> None:
    from tunelab.engine.data import prepare_data

    from tunelab.core.events import EventTail, EventWriter
    from tunelab.engine.train import prepare_progress

    config, tokenizer, choice = _setup(tmp_path, "chatml", rows=12, val_size=3)
    events = tmp_path / "events.jsonl"
    first = prepare_data(config, tokenizer, choice, progress=prepare_progress(EventWriter(events)))
    assert (len(first.train), len(first.eval)) == (9, 3)
    progress = [{k: e[k] for k in ("type", "stage", "done", "total")} for e in EventTail(events).read_new()]
    assert progress[-1] == {"type": "prepare", "stage": "tokenize", "done": 12, "total": 12}
    calls: list[tuple[int, int]] = []
    path = Path(config.dataset[0])
    os.utime(path, (1, 1))  # a new modification time, the same bytes: still cached
    calls.clear()
    again = prepare_data(config, tokenizer, choice, progress=lambda *a: calls.append(a))
    assert not calls and again.train.to_list() == first.train.to_list()
    with path.open("a") as handle:
        handle.write(json.dumps({"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}) + "\n")
    changed = prepare_data(config, tokenizer, choice, progress=lambda *a: calls.append(a))
    assert calls[-1] == (13, 13) and len(changed.train) + len(changed.eval) == 13


def test_the_stream_is_never_held_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config, tokenizer, choice = _setup(tmp_path, "chatml")
    monkeypatch.setattr(prepare, "CHUNK", 3)
    pulled, lags = [0], []
    merge = prepare._merge

    def recording(result, task, outcome, report):  # how far reading ran ahead of finished chunks
        merge(result, task, outcome, report)
        lags.append(pulled[0] - report.done)

    def examples():
        for i in range(60):
            pulled[0] += 1
            yield {"messages": [{"role": "user", "content": f"Q{i}"}, {"role": "assistant", "content": f"A{i}"}]}

    monkeypatch.setattr(prepare, "_merge", recording)
    job = prepare.EncodeJob(config, tokenizer, choice)
    result = prepare.encode_stream(job, examples(), total=60, out_dir=tmp_path, workers=2)
    assert result.stats.kept == 60 and len(result.shards) == 20 and max(lags) <= (2 * 2 + 1) * 3
    import datasets

    shards = datasets.concatenate_datasets([datasets.Dataset.from_file(str(s)) for s in result.shards])
    assert len(shards) == 60 and tokenizer.decode(shards[59]["input_ids"]).endswith("A59<|im_end|>\n")


def test_job_survives_pickling_for_spawned_workers(tmp_path: Path) -> None:
    config, tokenizer, choice = _setup(tmp_path, "chatml")
    prepare._set_job(pickle.loads(pickle.dumps(prepare.EncodeJob(config, tokenizer, choice))))  # as spawned
    try:
        stats, lengths, wrote = prepare._encode_chunk((0, 0, [{"messages": CONVERSATION}], tmp_path / "0.arrow", True))
    finally:
        prepare._set_job(None)
    (row,) = encode_conversations(tokenizer, choice.template, [CONVERSATION], cutoff_len=60)
    first = next(i for i, label in enumerate(row["labels"]) if label != IGNORE)
    assert wrote and stats.kept == 1 and lengths == [(len(row["input_ids"]), first)]


def test_data_check_lengths_use_the_same_encoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tunelab.engine.lengths import UNCUT, measure

    config, tokenizer, choice = _setup(tmp_path, "chatml")
    examples = [{"messages": [{"role": "user", "content": "word " * (i * 3)}, {"role": "assistant", "content": "ok " * i}]}
                for i in range(1, 13)]
    monkeypatch.setattr(prepare, "CHUNK", 5)
    measured = measure(examples, "sharegpt", tokenizer, choice, cutoff=30, workers=2)
    rows = encode_conversations(tokenizer, choice.template, [e["messages"] for e in examples], cutoff_len=UNCUT)
    assert measured.lengths == [len(r["input_ids"]) for r in rows]
    cut = [r for r in rows if len(r["input_ids"]) > 30]
    dropped = sum(all(label == IGNORE for label in r["labels"][:30]) for r in cut)
    assert (measured.dropped, measured.truncated) == (dropped, len(cut) - dropped) and dropped and len(cut) > dropped


def test_a_folder_digest_skips_subfolders_as_reading_does(tmp_path: Path) -> None:
    # a subfolder named like a dataset file is not one: hashing it raised IsADirectoryError
    from tunelab.core.datafiles import dataset_files, iter_rows
    from tunelab.core.datasets import DatasetSpec
    from tunelab.engine.data import Source

    (tmp_path / "a.json").write_text(json.dumps([{"instruction": "q", "output": "a"}]))
    (tmp_path / "x.json").mkdir()
    source = Source("d", DatasetSpec(file=str(tmp_path)), tmp_path)
    first = source.digest()
    (tmp_path / "x.json" / "b.json").write_text("[]")
    assert source.digest() == first
    assert [p.name for p in dataset_files(tmp_path)] == ["a.json"]
    assert len(list(iter_rows(tmp_path))) == 1
