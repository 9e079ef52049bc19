"""Per-step host work a transformers/trl trainer does that a single-process run does not need.

On a GPU the host queues kernels ahead of the device; each host sync (``.item()``, ``bool(tensor)``) and each walk
over all ~3,000 modules or ~1,000 parameters of an 8B peft model between steps is time the GPU sits idle. With
the fast path the step's GPU work is short enough that this showed: ``tunelab train`` ran 14% slower than the
bare loop on the same batches. ``LeanSteps`` (mixed into trl's SFTTrainer) removes, in a single process:
- the walk of every module by ``model.train()`` at each step (done once; again only when the mode changes);
- ``model.zero_grad()``'s and gradient clipping's walks over every parameter (the optimizer's own list instead);
- ``floating_point_ops``' parameter count at each step (counted once);
- the trainer's token count, a host sync per step: with the fast path it comes from the host-side token plan;
- with the fast path, trl's chunked LM head (a third vocabulary-sized GEMM) and the three syncs between forward
  and backward in its compute_loss (two metrics, the token count): the fast path's fused loss computes the loss,
  the entropy and the top-1 accuracy in one kernel, kept on the device until the step is logged.
(sft.py also turns off the NaN filter of the logged loss, another sync per step.)
Several processes (DDP, FSDP2, DeepSpeed) and trl settings the fused loss does not cover keep trl's own code.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator


class LeanSteps:
    """Mixin for a trl trainer class (first in the bases): the same training with less host work per step."""

    _lean_params: list[Any] | None = None
    _lean_count: int | None = None
    _lean_seen: int | None = None

    def _single_process(self) -> bool:
        return (self.accelerator.num_processes == 1 and not self.is_deepspeed_enabled  # type: ignore[attr-defined]
                and not self.is_fsdp_enabled)  # type: ignore[attr-defined]

    def _optimizer_params(self) -> list[Any]:
        if self._lean_params is None:
            groups = self.optimizer.param_groups  # type: ignore[attr-defined]
            self._lean_params = [p for group in groups for p in group["params"]]
        return self._lean_params

    def train(self, *args: Any, **kwargs: Any) -> Any:
        """Trainer.train, with the model's per-step walks replaced while it runs (single process)."""
        self._lean_params = None
        with self._lean_model() if self._single_process() else contextlib.nullcontext():
            return super().train(*args, **kwargs)  # type: ignore[misc]

    @contextlib.contextmanager
    def _lean_model(self) -> Iterator[None]:
        model = self.model  # type: ignore[attr-defined]
        cls = type(model)
        walked: dict[str, bool | None] = {"mode": None}  # the mode the last full walk set on every submodule

        def train(mode: bool = True) -> Any:
            # The root's own flag is no proof: a peft wrapper is created training around a model loaded in eval mode.
            if walked["mode"] is mode:
                return model
            walked["mode"] = mode
            return cls.train(model, mode)

        def zero_grad(set_to_none: bool = True) -> None:
            if self.optimizer is None:  # type: ignore[attr-defined]
                cls.zero_grad(model, set_to_none)
            else:  # frozen parameters never hold a gradient: the optimizer's parameters are all there is to clear
                self.optimizer.zero_grad(set_to_none=set_to_none)  # type: ignore[attr-defined]

        model.__dict__.update(train=train, zero_grad=zero_grad)
        try:
            yield
        finally:
            model.__dict__.pop("train", None)
            model.__dict__.pop("zero_grad", None)

    def _clip_grad_norm(self, model: Any) -> Any:
        if not self._single_process():
            return super()._clip_grad_norm(model)  # type: ignore[misc]
        return self.accelerator.clip_grad_norm_(self._optimizer_params(), self.args.max_grad_norm)  # type: ignore[attr-defined]

    def floating_point_ops(self, inputs: dict[str, Any]) -> int:
        """6 x tokens x parameters (without embeddings), the parameters counted once."""
        model = self.model  # type: ignore[attr-defined]
        main = getattr(model, "main_input_name", "input_ids")
        if main not in inputs or not hasattr(model, "num_parameters"):
            return 0
        if self._lean_count is None:
            self._lean_count = model.num_parameters(exclude_embeddings=True)
        return 6 * inputs[main].numel() * self._lean_count

    def _track_num_input_tokens(self, inputs: dict[str, Any]) -> None:
        seen, self._lean_seen = self._lean_seen, None
        if seen is None or self.args.include_num_input_tokens_seen != "non_padding":  # type: ignore[attr-defined]
            return super()._track_num_input_tokens(inputs)  # type: ignore[misc]
        self.state.num_input_tokens_seen += seen  # type: ignore[attr-defined]

    def _fast_patch(self) -> Any:
        """The fast path's patch when trl's loss can be left to its fused loss, else None."""
        from tunelab.engine.fast.model import causal_lm_of

        patch = getattr(causal_lm_of(self.model), "_tunelab_fast", None)  # type: ignore[attr-defined]
        plain = (self.compute_loss_func is None and self.label_smoother is None  # type: ignore[attr-defined]
                 and getattr(self.args, "loss_type", "nll") == "nll"  # type: ignore[attr-defined]
                 and not getattr(self, "aux_loss_enabled", False))
        return patch if patch is not None and patch.options.fused_ce and plain and self._single_process() else None

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        """With the fast path: its fused loss and metrics, no host sync; otherwise trl's compute_loss."""
        patch = self._fast_patch()
        if patch is None or return_outputs or "labels" not in inputs:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)  # type: ignore[misc]
        patch.last = {}
        loss = model(**{**inputs, "use_cache": False}, num_items_in_batch=num_items_in_batch).loss
        stats = patch.last
        if "tokens" not in stats:  # an input the fused loss does not cover: transformers' own loss, no metrics
            return loss
        mode = "train" if self.model.training else "eval"  # type: ignore[attr-defined]
        metrics = self._metrics[mode]  # type: ignore[attr-defined]
        labelled = max(stats["tokens"], 1)
        metrics["entropy"].append(stats["entropy_sum"] / labelled)  # tensors until the step is logged
        metrics["mean_token_accuracy"].append(stats["top1"] / labelled)
        if mode == "train":
            self._lean_seen = stats["seen"]
            self._total_train_tokens += stats["seen"]  # type: ignore[attr-defined]
            metrics["num_tokens"] = [self._total_train_tokens]  # type: ignore[attr-defined]
        return loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """trl's log, after turning the metrics kept on the device into numbers (one sync per logged step)."""
        import torch

        for store in getattr(self, "_metrics", {}).values():  # trl's per-step metrics
            for key, values in store.items():
                if any(isinstance(v, torch.Tensor) for v in values):
                    store[key] = [float(v) for v in values]
        super().log(logs, start_time)  # type: ignore[misc]


def lean(trainer_class: type) -> type:
    """``trainer_class`` with LeanSteps mixed in."""
    return type(f"Lean{trainer_class.__name__}", (LeanSteps, trainer_class), {})
