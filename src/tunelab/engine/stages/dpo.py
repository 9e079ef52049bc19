"""Stage dpo: direct preference optimisation on chosen/rejected pairs (trl's DPOTrainer).

The reference model is the adapter-disabled base for LoRA (trl does this when no reference is given), a frozen copy
of the starting weights otherwise, an explicit model (``ref_model: path``), or none (``ref_model: none``: the
reference log-probabilities are zero, i.e. reference-free DPO).
"""

from __future__ import annotations

import logging
from typing import Any

from tunelab.core.config import RunConfig
from tunelab.engine.stages.base import PreTokenized, StageContext, not_fast, trainer_kwargs, training_args
from tunelab.engine.stages.pairs import encode_pairs

log = logging.getLogger(__name__)
encode = encode_pairs


def booster_blocker(config: RunConfig) -> str | None:
    """trl's DPO computes log-probabilities from the LM head itself."""
    return not_fast(config.stage)


def load_reference(config: RunConfig, base_path: str) -> Any:
    """The explicit reference model of ``ref_model``, or None when trl derives it (base) or there is none."""
    if config.ref_model in ("base", "none"):
        return None
    from tunelab.engine.model import load_model, resolve_model_path

    log.info("reference model: %s", config.ref_model)
    reference = load_model(config.model_copy(update={"quantization": "none"}), resolve_model_path(config.ref_model))
    reference.requires_grad_(False)
    return reference.eval()


def _trainer_class() -> type:
    from trl import DPOTrainer

    class TunelabDPOTrainer(PreTokenized, DPOTrainer):
        """DPOTrainer over tunelab's pre-tokenized pairs; reference-free when asked."""

        reference_free = False

        def _precompute_ref_logps(self, dataset: Any, name: str, batch_size: int) -> Any:
            if not self.reference_free:
                return super()._precompute_ref_logps(dataset, name, batch_size)
            zeros = [0.0] * len(dataset)
            return dataset.add_column("ref_chosen_logps", zeros).add_column("ref_rejected_logps", zeros)

    return TunelabDPOTrainer


def build_trainer(ctx: StageContext) -> Any:
    """RunConfig -> DPOConfig + DPOTrainer."""
    from trl import DPOConfig

    config = ctx.config
    reference_free = config.ref_model == "none"
    args = training_args(
        ctx, DPOConfig, beta=config.beta, loss_type=[config.dpo_loss], label_smoothing=config.label_smoothing,
        max_length=config.cutoff_len, precompute_ref_log_probs=reference_free, remove_unused_columns=False,
        dataset_num_proc=None,
    )
    trainer_class = _trainer_class()
    trainer_class.reference_free = reference_free
    log.info("dpo: loss %s, beta %s, reference %s", config.dpo_loss, config.beta,
             "none (reference-free)" if reference_free else config.ref_model)
    return trainer_class(args=args, ref_model=load_reference(config, ctx.path), **trainer_kwargs(ctx))
