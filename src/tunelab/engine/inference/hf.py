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
from tunelab.core.generation import Delta, InferenceError, SamplingParams, TokenLogprob, TokenStream
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
        from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

        from tunelab.engine.model import load_tokenizer, set_cpu_threads
        from tunelab.engine.vlm import image_text, is_vlm, load_processor

        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        kwargs: dict[str, Any] = {"dtype": torch_dtype(options.dtype, self.device), "trust_remote_code": options.trust_remote_code}
        if self.device == "cuda":
            kwargs["device_map"] = "auto"
        self.processor: Any = None  # a vision-language model's processor: it turns images into pixel inputs
        try:
            if is_vlm(spec.path, options.trust_remote_code):
                self.processor = load_processor(spec.path, options.trust_remote_code)
                self.tokenizer, self.image_text = self.processor.tokenizer, image_text(self.processor)
            else:
                self.tokenizer = load_tokenizer(spec.path, options.trust_remote_code)
            auto = AutoModelForImageTextToText if self.processor is not None else AutoModelForCausalLM
            model = auto.from_pretrained(spec.path, **kwargs)
        except (OSError, ConfigError) as exc:
            message = str(exc).removeprefix("model: ")
            raise InferenceError(f"model: cannot load {spec.model!r}: {message.splitlines()[0]}") from None
        model.eval()
        set_cpu_threads(model)  # token-by-token decoding of a small model: one thread, not a hand-off per token
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

    def _input_ids(self, prompt: str | list[int], add_special_tokens: bool) -> Any:
        import torch

        if isinstance(prompt, list):
            vocab = len(self.tokenizer)
            bad = next((t for t in prompt if not 0 <= t < vocab), None)
            if bad is not None:
                raise InferenceError(f"prompt: token id {bad} is outside the vocabulary (0..{vocab - 1})")
            return torch.tensor([prompt], dtype=torch.long, device=self.model.device)
        return self.tokenizer(prompt, add_special_tokens=add_special_tokens, return_tensors="pt")["input_ids"].to(self.model.device)

    def prompt_logprobs(self, model: str, prompt: str | list[int], top: int, add_special_tokens: bool = True) -> list[TokenLogprob]:
        """One forward pass over the prompt: each token's log-probability given the ones before it."""
        import torch

        self.check_model(model)
        input_ids = self._input_ids(prompt, add_special_tokens)
        if input_ids.shape[1] == 0:
            raise InferenceError("prompt: it is empty")
        with self._lock, torch.inference_mode(), self._adapter_scope(model):
            logits = self.model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids)).logits[0, :-1]
            ids = input_ids[0].tolist()
            entries = [TokenLogprob(self._token(ids[0]), None, id=ids[0])]
            for start in range(0, logits.shape[0], 512):  # log_softmax in slices: never a second full copy of the logits
                chunk = torch.log_softmax(logits[start : start + 512].float(), dim=-1)
                for row, token in zip(chunk, ids[start + 1 : start + 1 + len(chunk)]):
                    entries.append(self._entry(row, token, top))
        return entries

    def _token(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id], skip_special_tokens=False)

    def _entry(self, row: Any, token_id: int, top: int) -> TokenLogprob:
        """The entry of ``token_id`` from one row of log-probabilities."""
        alternatives = []
        if top:
            values, indices = row.topk(top)
            alternatives = [(self._token(i), float(v)) for v, i in zip(values.tolist(), indices.tolist())]
        return TokenLogprob(self._token(token_id), float(row[token_id]), alternatives, token_id)

    def _image_inputs(self, prompt: str, images: list[Any]) -> dict[str, Any]:
        """The processor's inputs for a prompt with images (decoded): expanded input_ids, attention_mask, pixel values."""
        inputs = self.processor(text=[prompt], images=list(images), add_special_tokens=False,
                                return_tensors="pt").to(self.model.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        return dict(inputs)

    def generate(
        self, model: str, prompt: str | list[int], params: SamplingParams, stream: TokenStream, cancel: threading.Event,
        add_special_tokens: bool, images: list[Any] | None = None,
    ) -> Iterator[Delta]:
        """Run ``generate`` in a thread and stream its tokens, decoded incrementally, through ``stream``."""
        import torch

        if images and isinstance(prompt, str):
            inputs = self._image_inputs(prompt, images)
        else:
            ids = self._input_ids(prompt, add_special_tokens)
            inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        input_ids = inputs["input_ids"]
        stop_ids = self._stop_ids(stream.stops)
        halt = threading.Event()
        tokens = _TokenQueue()
        kwargs = _generate_kwargs(params, stop_ids, self.tokenizer.pad_token_id)
        kwargs.update(inputs, streamer=tokens, stopping_criteria=_halt_criteria(halt, cancel))
        errors: list[BaseException] = []

        def run() -> None:
            try:
                if params.seed is not None:
                    torch.manual_seed(params.seed)
                with torch.inference_mode(), self._adapter_scope(model), self._scores(params.logprobs, tokens):
                    self.model.generate(**kwargs)
            except BaseException as exc:  # reported to the caller below
                errors.append(exc)
            finally:
                tokens.end()

        thread = threading.Thread(target=run, name="tunelab-generate", daemon=True)
        thread.start()
        decoder = _Detokenizer(self.tokenizer)
        try:
            for token_id, row in tokens:
                entries = [self._entry(row, token_id, params.logprobs or 0)] if row is not None else None
                delta = stream.feed(decoder.add(token_id), entries)
                if delta:
                    yield delta
                if stream.stopped or cancel.is_set():
                    halt.set()
        finally:
            halt.set()
            thread.join()
        if errors:
            raise errors[0]
        tail = stream.feed(decoder.flush())
        end = stream.finish()
        for delta in (tail, end):
            if delta:
                yield delta
        yield Delta(finish_reason=_finish_reason(stream, cancel, tokens, stop_ids, params),
                    prompt_tokens=int(input_ids.shape[1]), completion_tokens=tokens.count)

    def _scores(self, logprobs: int | None, tokens: "_TokenQueue") -> Any:
        """While generating with logprobs: hand each step's raw next-token log-probabilities to ``tokens``."""
        if logprobs is None:
            return contextlib.nullcontext()
        import torch

        inner = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model

        def hook(module: Any, args: Any, output: Any) -> None:
            tokens.scores = torch.log_softmax(output.logits[0, -1].float(), dim=-1)

        handle = inner.register_forward_hook(hook)
        return contextlib.closing(_Handle(handle))


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


def _finish_reason(stream: TokenStream, cancel: threading.Event, tokens: Any, stop_ids: set[int], params: SamplingParams) -> str:
    if cancel.is_set():
        return "cancelled"
    if stream.stopped or tokens.last_id in stop_ids:
        return "stop"
    return "length" if tokens.count >= params.max_new_tokens else "stop"


class _Handle:
    """A hook handle with close(), for contextlib.closing."""

    def __init__(self, handle: Any):
        self.handle = handle

    def close(self) -> None:
        self.handle.remove()


class _TokenQueue:
    """A generate() streamer that queues each new token id (with its step's log-probabilities when captured)."""

    def __init__(self) -> None:
        import queue

        self.queue: queue.Queue = queue.Queue()
        self.prompt_done = False
        self.count = 0
        self.last_id: int | None = None
        self.scores: Any = None

    def put(self, value: Any) -> None:
        """Called by generate(): first with the prompt, then with each new token."""
        if not self.prompt_done:
            self.prompt_done = True
            return
        for token_id in value.reshape(-1).tolist():
            self.count += 1
            self.last_id = token_id
            self.queue.put((token_id, self.scores))

    def end(self) -> None:
        """Called when generation ends."""
        self.queue.put(None)

    def __iter__(self) -> Iterator[tuple[int, Any]]:
        while (item := self.queue.get()) is not None:
            yield item


class _Detokenizer:
    """Incremental decoding: each token's new text, held back while it ends in an incomplete character."""

    def __init__(self, tokenizer: Any):
        self.tokenizer, self.ids, self.prefix, self.read = tokenizer, [], 0, 0

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def add(self, token_id: int) -> str:
        """The text that ``token_id`` completes ('' while a character is still incomplete)."""
        self.ids.append(token_id)
        before = self._decode(self.ids[self.prefix : self.read])
        after = self._decode(self.ids[self.prefix :])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return after[len(before):]
        return ""

    def flush(self) -> str:
        """Whatever is still held (an incomplete character at the very end)."""
        before = self._decode(self.ids[self.prefix : self.read])
        after = self._decode(self.ids[self.prefix :])
        self.prefix = self.read = len(self.ids)
        return after[len(before):]


def _halt_criteria(*events: threading.Event) -> Any:
    """Stopping criteria that end generation as soon as any event is set (stop string seen, client gone)."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class Halt(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            done = any(e.is_set() for e in events)
            return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([Halt()])
