"""Trainer callbacks: stream metrics into events.jsonl and stop cleanly on SIGTERM/SIGINT."""

from __future__ import annotations

import logging
import math
import resource
import signal
import sys
import time
from typing import Any

from transformers import TrainerCallback

from tunelab.core.events import EventWriter

log = logging.getLogger(__name__)


class StopRequest:
    """Set by SIGTERM/SIGINT. Before training starts a signal aborts at once; during training the current
    step finishes, a checkpoint is saved and the trainer returns."""

    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""
        self.training = False

    def install(self) -> None:
        """Route SIGTERM and SIGINT here."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        log.warning("received %s: %s", self.signal_name, "stopping after this step" if self.training else "aborting")
        if not self.training:
            raise KeyboardInterrupt(self.signal_name)


def _peak_memory_gb() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / 2**20 if sys.platform != "darwin" else kib / 2**30


def _gpu_memory_fields() -> dict[str, float]:
    """On a GPU: peak reserved GiB (what nvidia-smi and an out-of-memory error see) and, when the fast path
    offloads activations, the peak pinned host GiB they held."""
    import torch

    if not torch.cuda.is_available():
        return {}
    fields = {"peak_reserved_gb": round(torch.cuda.max_memory_reserved() / 2**30, 3)}
    store = sys.modules.get("tunelab.engine.fast.checkpoint")
    if store is not None and store.pinned_peak_bytes():
        fields["pinned_host_gb"] = round(store.pinned_peak_bytes() / 2**30, 3)
    return fields


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item"):
        value = value.item()
    return round(value, 6) if isinstance(value, float) else value


_OWN_KEYS = {"loss", "epoch", "grad_norm", "learning_rate", "total_flos", "num_input_tokens_seen", "step"}


def stage_metrics(logs: dict) -> dict[str, Any]:
    """Every other numeric value the trainer logged (trl's names kept: rewards/margins, kl, reward ...)."""
    out = {}
    for key, value in logs.items():
        if key in _OWN_KEYS or key.startswith("train_") or isinstance(value, bool):
            continue
        if isinstance(value, (int, float)) or hasattr(value, "item"):
            out[key] = _clean(value)
    return out


def _rate(tokens: int, seconds: float) -> float | None:
    """Tokens per second over a span (None for an empty span)."""
    return round(tokens / seconds, 1) if seconds > 0 else None


class EventsCallback(TrainerCallback):
    """Writes ``train`` and ``eval`` events, and honours the stop request."""

    def __init__(self, writer: EventWriter, stop: StopRequest):
        self.writer, self.stop = writer, stop
        self.start_time = time.time()
        self.start_step = 0
        self.start_tokens = 0
        self.last_time = self.start_time
        self.last_tokens = 0

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.start_time = time.time()
        self.start_step = state.global_step
        self.start_tokens = state.num_input_tokens_seen or 0
        self.last_time, self.last_tokens = self.start_time, self.start_tokens
        self.stop.training = True

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        stop_now = self.stop.requested
        if args.world_size > 1:
            # Every rank stops at the same step: the step's vote decides. A signal handled while the vote is under
            # way sets the flag after its value was sent, so the flag is never overwritten by the vote (that lost
            # Stop on both ranks once); it is counted in the next step's vote.
            from tunelab.engine.dist import any_rank

            stop_now = any_rank(stop_now)
            if stop_now and not self.stop.requested:
                self.stop.requested = True
                self.stop.signal_name = self.stop.signal_name or "a signal to another rank"
        if stop_now:
            control.should_save = True
            control.should_training_stop = True

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        logs = logs or {}
        if "loss" not in logs:
            return
        now = time.time()
        elapsed = now - self.start_time
        steps = max(state.global_step - self.start_step, 1)
        tokens = state.num_input_tokens_seen or 0
        remaining = max(state.max_steps - state.global_step, 0)
        event = self.writer.write(
            "train",
            **stage_metrics(logs),
            step=state.global_step,
            total_steps=state.max_steps,
            epoch=_clean(logs.get("epoch", state.epoch)),
            loss=_clean(logs["loss"]),
            grad_norm=_clean(logs.get("grad_norm")),
            lr=_clean(logs.get("learning_rate")),
            tokens_seen=tokens,
            tokens_per_s=_rate(tokens - self.last_tokens, now - self.last_time) if tokens else None,
            tokens_per_s_avg=_rate(tokens - self.start_tokens, elapsed) if tokens else None,
            peak_mem_gb=round(_peak_memory_gb(), 3),
            **_gpu_memory_fields(),
            elapsed_s=round(elapsed, 2),
            eta_s=round(elapsed / steps * remaining, 1),
        )
        self.last_time, self.last_tokens = now, tokens
        log.info(
            "step %d/%d loss %.4f lr %.2e %.0f tok/s eta %.0fs",
            event["step"], event["total_steps"], event["loss"] or float("nan"), event["lr"] or 0.0,
            event["tokens_per_s"] or 0.0, event["eta_s"],
        )

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict | None = None, **kwargs: Any) -> None:
        metrics = {k: _clean(v) for k, v in (metrics or {}).items() if isinstance(v, (int, float))}
        if "eval_loss" in metrics:
            self.writer.write("eval", step=state.global_step, total_steps=state.max_steps, **metrics)
            log.info("step %d eval_loss %.4f", state.global_step, metrics["eval_loss"])
