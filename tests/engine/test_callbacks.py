"""EventsCallback: the live tokens/s is the rate over the last logging interval, the average its own field."""

from __future__ import annotations

import json
from types import SimpleNamespace

from tunelab.core.events import EventWriter
from tunelab.engine import callbacks
from tunelab.engine.callbacks import EventsCallback, StopRequest


def test_tokens_per_s_is_the_last_interval_rate(tmp_path, monkeypatch):
    clock = {"now": 1000.0}
    monkeypatch.setattr(callbacks.time, "time", lambda: clock["now"])
    writer = EventWriter(tmp_path / "events.jsonl")
    callback = EventsCallback(writer, StopRequest())
    state = SimpleNamespace(global_step=0, max_steps=30, num_input_tokens_seen=0, epoch=0.0)
    callback.on_train_begin(None, state, None)
    # a slow first interval (warm-up: 1,000 tokens in 10 s), then two fast ones (1,000 tokens per second)
    for step, seconds, tokens in ((10, 10.0, 1000), (20, 1.0, 1000), (30, 1.0, 1000)):
        clock["now"] += seconds
        state.global_step += 10
        state.num_input_tokens_seen += tokens
        callback.on_log(None, state, None, logs={"loss": 1.0, "learning_rate": 1e-4})
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert [e["tokens_per_s"] for e in events] == [100.0, 1000.0, 1000.0]
    assert [e["tokens_per_s_avg"] for e in events] == [100.0, round(2000 / 11, 1), round(3000 / 12, 1)]
