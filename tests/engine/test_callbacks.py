"""EventsCallback: the live tokens/s is the rate over the last logging interval, the average its own field; several
ranks stop at the same step, and a Stop signal is never lost to their vote."""

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


def _control() -> SimpleNamespace:
    return SimpleNamespace(should_save=False, should_training_stop=False)


def test_a_stop_signal_during_the_ranks_vote_is_counted_at_the_next_step(tmp_path, monkeypatch):
    """The race that lost Stop in a 2-process run: SIGTERM handled while on_step_end's all-reduce was under way
    (a real signal to this process; the collective is replaced by the vote of two ranks, the other without a signal)."""
    import os
    import signal

    from tunelab.engine import dist

    votes: list[bool] = []

    def vote(flag: bool) -> bool:
        votes.append(flag)
        if len(votes) == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # handled before this function returns
        return flag  # the maximum over both ranks: the other one has no signal

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    stop = StopRequest()
    try:
        stop.install()
        stop.training = True
        monkeypatch.setattr(dist, "any_rank", vote)
        callback = EventsCallback(EventWriter(tmp_path / "events.jsonl"), stop)
        args = SimpleNamespace(world_size=2)
        first, second = _control(), _control()
        callback.on_step_end(args, None, first)
        assert stop.requested and stop.signal_name == "SIGTERM", "the signal is kept, not overwritten by the vote"
        assert not first.should_training_stop, "this step's vote said no: no rank stops alone"
        callback.on_step_end(args, None, second)
        assert votes == [False, True] and second.should_training_stop and second.should_save
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def test_a_signal_to_another_rank_stops_this_one_at_the_same_step(tmp_path, monkeypatch):
    from tunelab.engine import dist

    monkeypatch.setattr(dist, "any_rank", lambda flag: True)  # the other rank got the signal
    stop = StopRequest()
    callback = EventsCallback(EventWriter(tmp_path / "events.jsonl"), stop)
    control = _control()
    callback.on_step_end(SimpleNamespace(world_size=2), None, control)
    assert control.should_training_stop and stop.requested and stop.signal_name == "a signal to another rank"
