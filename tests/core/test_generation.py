"""Sampling parameters and the streaming stop matcher (pure Python)."""

from __future__ import annotations

import pytest

from tunelab.core.generation import InferenceError, SamplingParams, StopMatcher


def feed_all(matcher: StopMatcher, pieces: list[str]) -> str:
    return "".join(matcher.feed(p) for p in pieces) + matcher.flush()


def test_stop_string_split_across_pieces_is_never_emitted() -> None:
    matcher = StopMatcher(["<|im_end|>", "\nUser:"])
    emitted = []
    for piece in ["Hello", " there<|im", "_e", "nd|>ignored"]:
        emitted.append(matcher.feed(piece))
    assert emitted == ["Hello", " there", "", ""]
    assert matcher.stopped and matcher.flush() == ""


def test_held_back_prefix_is_released_when_it_is_not_a_stop() -> None:
    matcher = StopMatcher(["STOP"])
    assert matcher.feed("abc ST") == "abc "
    assert matcher.feed("ART") == "START"
    assert feed_all(StopMatcher(["STOP"]), ["ends with ST"]) == "ends with ST"


def test_earliest_of_several_stops_wins() -> None:
    assert feed_all(StopMatcher(["b", "a"]), ["xxab"]) == "xx"
    assert feed_all(StopMatcher([]), ["plain", " text"]) == "plain text"


@pytest.mark.parametrize(
    "field, value",
    [("temperature", -0.1), ("top_p", 0.0), ("top_k", -1), ("max_new_tokens", 0), ("repetition_penalty", 0.0), ("seed", -5)],
)
def test_bad_sampling_values_name_the_field(field: str, value: object) -> None:
    with pytest.raises(InferenceError, match=rf"^{field}: "):
        SamplingParams(**{field: value})


def test_sampling_round_trip() -> None:
    params = SamplingParams(temperature=0, stop="END", seed=3)
    assert params.greedy and params.stop == ["END"]
    assert SamplingParams.from_dict({**params.to_dict(), "unknown": 1}) == params


def test_token_stream_keeps_logprobs_with_the_text_they_made() -> None:
    from tunelab.core.generation import TokenLogprob, TokenStream

    def entry(token: str) -> TokenLogprob:
        return TokenLogprob(token, -1.0)

    stream = TokenStream(["STOP"])
    out = [stream.feed(t, [entry(t)]) for t in ["Hel", "lo", " ST", "OP", " after"]]
    end = stream.finish()
    texts = "".join(d.text for d in out if d) + (end.text if end else "")
    tokens = [e.token for d in [*out, end] if d for e in d.logprobs or []]
    assert texts == "Hello " and tokens == ["Hel", "lo", " ST"]  # " ST" gave the emitted space; "OP" was cut
    stream = TokenStream([])
    out = [stream.feed("Hi", [entry("Hi")]), stream.feed("", [entry("</s>")])]
    end = stream.finish()
    assert [e.token for d in [*out, end] if d for e in d.logprobs or []] == ["Hi", "</s>"]  # a text-less EOS is kept
