"""The ``hf`` engine: transformers ``generate`` with a streamer, LoRA adapters through peft.

Every adapter is loaded once into one PeftModel; a request picks its adapter with ``set_adapter`` (or
``disable_adapter`` for the base model), so switching never reloads the base weights.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from typing import Any

from tunelab.core.config import ConfigError
from tunelab.core.generation import Delta, InferenceError, SamplingParams, StopMatcher
from tunelab.core.serving import EngineOptions, ModelSpec
from tunelab.engine.inference.base import LocalEngine

log = logging.getLogger(__name__)


def torch_dtype(name: str, device: str) -> Any:
    """The torch dtype for ``name``; 'auto' is fp32 on CPU, bf16 (or fp16) on a GPU."""
    import torch

    if name == "auto":
        if device == "cpu":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


class HFEngine(LocalEngine):
    """transformers + peft; runs anywhere, CPU included."""

    name = "hf"

    def __init__(self, spec: ModelSpec, options: EngineOptions):
        super().__init__(spec)
        import torch
        from transformers import AutoModelForCausalLM

        from tunelab.engine.model import load_tokenizer

        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        kwargs: dict[str, Any] = {"dtype": torch_dtype(options.dtype, self.device), "trust_remote_code": options.trust_remote_code}
        if self.device == "cuda":
            kwargs["device_map"] = "auto"
        try:
            self.tokenizer = load_tokenizer(spec.path, options.trust_remote_code)
            model = AutoModelForCausalLM.from_pretrained(spec.path, **kwargs)
        except (OSError, ConfigError) as exc:
            message = str(exc).removeprefix("model: ")
            raise InferenceError(f"model: cannot load {spec.model!r}: {message.splitlines()[0]}") from None
        model.eval()
        self.model = self._attach_adapters(model)
        self.eos_ids = self._eos_ids()
        log.info("hf engine: %s on %s (%s), adapters: %s", spec.path, self.device, kwargs["dtype"],
                 ", ".join(a.name for a in spec.adapters) or "none")

    def _attach_adapters(self, model: Any) -> Any:
        if not self.spec.adapters:
            return model
        from peft import PeftModel

        first, *rest = self.spec.adapters
        try:
            model = PeftModel.from_pretrained(model, first.path, adapter_name=first.name)
            for adapter in rest:
                model.load_adapter(adapter.path, adapter_name=adapter.name)
        except (ValueError, RuntimeError, OSError) as exc:
            raise InferenceError(f"adapter: cannot load onto {self.spec.model!r}: {str(exc).splitlines()[0]}") from None
        model.eval()
        return model

    def _eos_ids(self) -> set[int]:
        ids: set[int] = set()
        for value in (getattr(self.model.generation_config, "eos_token_id", None), self.tokenizer.eos_token_id):
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, (list, tuple)):
                ids.update(int(v) for v in value)
        return ids

    def _stop_ids(self, stops: list[str]) -> set[int]:
        """EOS plus every stop string that is a single token (e.g. <|im_end|>, <|eot_id|>)."""
        ids = set(self.eos_ids)
        for stop in stops:
            encoded = self.tokenizer.encode(stop, add_special_tokens=False)
            if len(encoded) == 1:
                ids.add(encoded[0])
        return ids

    def _adapter_scope(self, model_name: str) -> Any:
        if not self.spec.adapters:
            return contextlib.nullcontext()
        adapter = self.spec.adapter(model_name)
        if adapter is None:
            return self.model.disable_adapter()
        self.model.set_adapter(adapter.name)
        return contextlib.nullcontext()

    def generate(
        self, model: str, prompt: str, params: SamplingParams, matcher: StopMatcher, cancel: threading.Event,
        add_special_tokens: bool,
    ) -> Iterator[Delta]:
        """Run ``generate`` in a thread and stream its text through the stop matcher."""
        import torch

        encoded = self.tokenizer(prompt, add_special_tokens=add_special_tokens, return_tensors="pt")
        input_ids = encoded["input_ids"].to(self.model.device)
        stop_ids = self._stop_ids(matcher.stops)
        halt = threading.Event()
        streamer = _streamer(self.tokenizer)
        kwargs = _generate_kwargs(params, stop_ids, self.tokenizer.pad_token_id)
        kwargs.update(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), streamer=streamer,
                      stopping_criteria=_halt_criteria(halt, cancel))
        errors: list[BaseException] = []

        def run() -> None:
            try:
                if params.seed is not None:
                    torch.manual_seed(params.seed)
                with torch.inference_mode(), self._adapter_scope(model):
                    self.model.generate(**kwargs)
            except BaseException as exc:  # reported to the caller below
                errors.append(exc)
                streamer.end()

        thread = threading.Thread(target=run, name="tunelab-generate", daemon=True)
        thread.start()
        try:
            for piece in streamer:
                text = matcher.feed(piece)
                if text:
                    yield Delta(text)
                if matcher.stopped or cancel.is_set():
                    halt.set()
        finally:
            halt.set()
            thread.join()
        if errors:
            raise errors[0]
        tail = matcher.flush()
        if tail:
            yield Delta(tail)
        yield Delta(finish_reason=_finish_reason(matcher, cancel, streamer, stop_ids, params),
                    prompt_tokens=int(input_ids.shape[1]), completion_tokens=streamer.count)


def _generate_kwargs(params: SamplingParams, stop_ids: set[int], pad_id: int | None) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "max_new_tokens": params.max_new_tokens, "eos_token_id": sorted(stop_ids), "pad_token_id": pad_id,
        "repetition_penalty": params.repetition_penalty, "do_sample": not params.greedy,
    }
    if params.greedy:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    else:
        kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=params.top_k or None)
    return kwargs


def _finish_reason(matcher: StopMatcher, cancel: threading.Event, streamer: Any, stop_ids: set[int], params: SamplingParams) -> str:
    if cancel.is_set():
        return "cancelled"
    if matcher.stopped or streamer.last_id in stop_ids:
        return "stop"
    return "length" if streamer.count >= params.max_new_tokens else "stop"


def _streamer(tokenizer: Any) -> Any:
    """A TextIteratorStreamer that also counts generated tokens and remembers the last one."""
    from transformers import TextIteratorStreamer

    class CountingStreamer(TextIteratorStreamer):
        count = 0
        last_id: int | None = None

        def put(self, value: Any) -> None:
            if not (self.skip_prompt and self.next_tokens_are_prompt):
                flat = value.reshape(-1).tolist()
                self.count += len(flat)
                self.last_id = flat[-1] if flat else self.last_id
            super().put(value)

    return CountingStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)


def _halt_criteria(*events: threading.Event) -> Any:
    """Stopping criteria that end generation as soon as any event is set (stop string seen, client gone)."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class Halt(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            done = any(e.is_set() for e in events)
            return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([Halt()])
