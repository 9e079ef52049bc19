"""Generation settings and streamed output shared by every inference engine and surface (pure Python).

``SamplingParams`` is the one set of sampling controls; engines map it to transformers ``generate`` kwargs,
vLLM ``SamplingParams`` or an OpenAI request. ``StopMatcher`` cuts streamed text at the first stop string
without ever emitting a partial stop string.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from typing import Any


MAX_TOP_LOGPROBS = 20  # as OpenAI's top_logprobs


class InferenceError(ValueError):
    """A user-facing inference problem (bad model path, missing engine, bad sampling value): one clear line."""


class ModelNotFound(InferenceError):
    """The requested model name is not served."""


class EngineCrashed(RuntimeError):
    """The process that owns the model died or stopped answering."""


CHAT_TEMPERATURE = 0.3  # what the Chat tab and `tunelab chat` sample at: small tuned models ramble at 0.7+


@dataclass
class SamplingParams:
    """Sampling controls. ``temperature == 0`` means greedy decoding; ``top_k == 0`` and ``top_p == 1`` are off."""

    temperature: float = 0.7
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 256
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    logprobs: int | None = None  # None = off; k >= 0: each token's log-probability plus its k likeliest alternatives

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = [s for s in (self.stop or []) if s]
        self.validate()

    def validate(self) -> None:
        """Raise InferenceError naming the field and its valid range."""
        checks = [
            ("temperature", self.temperature, 0 <= self.temperature <= 10, "a number from 0 to 10 (0 = greedy)"),
            ("top_p", self.top_p, 0 < self.top_p <= 1, "a number in (0, 1]"),
            ("top_k", self.top_k, isinstance(self.top_k, int) and self.top_k >= 0, "an integer >= 0 (0 = off)"),
            ("max_new_tokens", self.max_new_tokens, isinstance(self.max_new_tokens, int) and self.max_new_tokens >= 1,
             "an integer >= 1"),
            ("repetition_penalty", self.repetition_penalty, 0 < self.repetition_penalty <= 10, "a number in (0, 10]"),
            ("seed", self.seed, self.seed is None or (isinstance(self.seed, int) and self.seed >= 0), "an integer >= 0"),
            ("logprobs", self.logprobs, self.logprobs is None or (isinstance(self.logprobs, int) and 0 <= self.logprobs <= MAX_TOP_LOGPROBS),
             f"an integer from 0 to {MAX_TOP_LOGPROBS} (alternatives per token)"),
        ]
        for name, value, ok, valid in checks:
            if not ok:
                raise InferenceError(f"{name}: {value!r} is not valid; use {valid}")
        if len(self.stop) > 16:
            raise InferenceError(f"stop: {len(self.stop)} stop sequences given; at most 16")

    @property
    def greedy(self) -> bool:
        """Whether decoding is greedy (no sampling)."""
        return self.temperature == 0

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SamplingParams":
        """Build from a dict, ignoring unknown keys and None values."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names and v is not None})


@dataclass
class TokenLogprob:
    """One token with its log-probability (None for a prompt's first token) and the likeliest alternatives."""

    token: str
    logprob: float | None
    top: list[tuple[str, float]] = field(default_factory=list)
    id: int | None = None


@dataclass
class Delta:
    """One piece of streamed output. The last piece carries ``finish_reason`` and the token counts; with
    logprobs requested, each piece carries the entries of the tokens its text came from."""

    text: str = ""
    finish_reason: str | None = None  # "stop" | "length" | "cancelled"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    logprobs: list[TokenLogprob] | None = None


class StopMatcher:
    """Feed text pieces; get back only text that cannot be the start of a stop string, until a stop matches."""

    def __init__(self, stops: Iterable[str]):
        self.stops = [s for s in dict.fromkeys(stops) if s]
        self.pending = ""
        self.stopped = False

    def feed(self, piece: str) -> str:
        """Return the text now safe to emit (everything before a matched stop string)."""
        if self.stopped:
            return ""
        self.pending += piece
        hits = [(self.pending.find(s), s) for s in self.stops if s in self.pending]
        if hits:
            self.stopped = True
            cut = min(index for index, _ in hits)
            out, self.pending = self.pending[:cut], ""
            return out
        hold = max((self._overlap(s) for s in self.stops), default=0)
        out = self.pending[: len(self.pending) - hold]
        self.pending = self.pending[len(out):]
        return out

    def flush(self) -> str:
        """The held-back text at the end of generation (it turned out not to be a stop string)."""
        out, self.pending = ("" if self.stopped else self.pending), ""
        return out

    def _overlap(self, stop: str) -> int:
        """Length of the longest suffix of the pending text that is a proper prefix of ``stop``."""
        for size in range(min(len(stop) - 1, len(self.pending)), 0, -1):
            if self.pending.endswith(stop[:size]):
                return size
        return 0


class TokenStream:
    """A StopMatcher that also keeps token log-probabilities aligned with the text it lets through: a token's
    entry is released once the first character it produced is emitted (tokens cut off by a stop string are
    dropped; trailing text-less tokens such as EOS are kept when no stop string ended the text)."""

    def __init__(self, stops: Iterable[str]):
        self.matcher = StopMatcher(stops)
        self._pending: list[tuple[int, TokenLogprob]] = []
        self._seen = self._emitted = 0

    @property
    def stops(self) -> list[str]:
        """The stop strings."""
        return self.matcher.stops

    @property
    def stopped(self) -> bool:
        """Whether a stop string matched."""
        return self.matcher.stopped

    def feed(self, piece: str, entries: list[TokenLogprob] | None = None) -> Delta | None:
        """The Delta now safe to emit for ``piece`` (and its tokens' entries), or None."""
        if self.matcher.stopped:
            return None
        self._pending.extend((self._seen, entry) for entry in entries or [])
        self._seen += len(piece)
        text = self.matcher.feed(piece)
        self._emitted += len(text)
        return self._delta(text, everything=False)

    def finish(self) -> Delta | None:
        """The held-back tail (and remaining entries) once generation has ended."""
        text = self.matcher.flush()
        self._emitted += len(text)
        return self._delta(text, everything=not self.matcher.stopped)

    def _delta(self, text: str, everything: bool) -> Delta | None:
        cut = len(self._pending) if everything else sum(1 for start, _ in self._pending if start < self._emitted)
        released, self._pending = [e for _, e in self._pending[:cut]], self._pending[cut:]
        if self.matcher.stopped:
            self._pending = []
        if not text and not released:
            return None
        return Delta(text, logprobs=released or None)
