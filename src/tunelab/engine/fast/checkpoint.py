"""Layer-level activation checkpointing, with the kept layer inputs optionally offloaded to pinned CPU memory.

Forward runs a layer without building its graph and keeps only its input: on the GPU (``full``) or copied to
pinned host memory on a side stream (``offload``). Backward brings the input back (prefetching the next layer's
while this one recomputes), re-runs the layer with grad and back-propagates through it.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable

import torch


_PINNED = {"peak": 0}
IN_FLIGHT = 3  # offload copies the host may queue ahead of the GPU (see ActivationStore.put)
_COPY_STREAMS: dict[torch.device, torch.cuda.Stream] = {}


def _copy_stream(device: torch.device) -> torch.cuda.Stream:
    """The one side stream of a device for offload copies. One per process, not one per forward pass: every stream
    keeps its own cache of the blocks allocated on it, and torch.cuda.Stream() hands out 32 pooled streams in turn,
    so a new one each step stranded that cache (~0.28 GiB a step on an 8B model, measured) until 32 steps had run."""
    if device not in _COPY_STREAMS:
        _COPY_STREAMS[device] = torch.cuda.Stream(device)
    return _COPY_STREAMS[device]


def pinned_peak_bytes() -> int:
    """The most pinned host memory one forward pass's offloaded layer inputs held so far in this process."""
    return _PINNED["peak"]


class ActivationStore:
    """The checkpointed layer inputs of one forward pass, in forward order."""

    def __init__(self, offload: bool, device: torch.device):
        self.device = device
        self.offload = offload and device.type == "cuda"
        self.stream = _copy_stream(device) if self.offload else None
        self.entries: list[Any] = []
        self.pinned = 0
        self.copies: deque[torch.cuda.Event] = deque()

    def put(self, t: torch.Tensor) -> int:
        """Keep ``t`` until backward; returns its slot."""
        t = t.detach()
        if not self.offload:
            self.entries.append(t if t.device.type == "cuda" else t.clone())
            return len(self.entries) - 1
        try:
            host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        except RuntimeError:  # no pinned memory available: a synchronous copy is still correct
            host = torch.empty(t.shape, dtype=t.dtype)
        if host.is_pinned():
            self.pinned += host.numel() * host.element_size()
            _PINNED["peak"] = max(_PINNED["peak"], self.pinned)
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.stream):
            host.copy_(t, non_blocking=True)
            done = torch.cuda.Event()
            done.record(self.stream)
        t.record_stream(self.stream)  # its memory returns to the pool once that copy is done
        # The host runs ahead of the GPU, so without a bound every layer input it queued stays allocated until its
        # copy runs (17 of 32 at the 8B model's peak): wait for the oldest copy beyond IN_FLIGHT.
        self.copies.append(done)
        if len(self.copies) > IN_FLIGHT:
            self.copies.popleft().synchronize()
        self.entries.append([host, None, None])
        return len(self.entries) - 1

    def _fetch(self, i: int) -> None:
        entry = self.entries[i]
        if entry is None or entry[1] is not None:
            return
        # Allocated on the compute stream, so it comes from (and returns to) the pool everything else uses; the copy
        # stream first waits for the compute work queued so far, which may still be using that memory's last tenant.
        dest = torch.empty(entry[0].shape, dtype=entry[0].dtype, device=self.device)
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.stream):
            dest.copy_(entry[0], non_blocking=True)
            entry[1:] = [dest, torch.cuda.Event()]
            entry[2].record(self.stream)
        dest.record_stream(self.stream)  # a step abandoned before take() must not free it under the copy

    def take(self, i: int) -> torch.Tensor:
        """The tensor in slot ``i`` (on the compute device); starts bringing back slot i-1."""
        if not self.offload:
            t, self.entries[i] = self.entries[i], None
            return t
        self._fetch(i)
        _, t, event = self.entries[i]
        torch.cuda.current_stream(self.device).wait_event(event)
        self.entries[i] = None
        if i > 0:
            self._fetch(i - 1)
        return t


class CheckpointedLayer(torch.autograd.Function):
    """out = run(h), recomputed in backward from the stored input. ``params`` are the layer's trainable
    parameters: passing them makes autograd call backward even when ``h`` needs no gradient (the first layer)."""

    @staticmethod
    def forward(ctx: Any, h: torch.Tensor, run: Callable[[torch.Tensor], torch.Tensor], store: ActivationStore,
                *params: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            out = run(h)
        ctx.slot = store.put(h)
        ctx.run, ctx.store = run, store
        ctx.save_for_backward(*params)
        return out

    @staticmethod
    def backward(ctx: Any, dout: torch.Tensor) -> tuple[Any, ...]:
        params = ctx.saved_tensors
        h = ctx.store.take(ctx.slot).detach().requires_grad_(True)
        with torch.enable_grad():
            out = ctx.run(h)
        grads = torch.autograd.grad(out, (h, *params), dout, allow_unused=True)
        return (grads[0], None, None, *grads[1:])
