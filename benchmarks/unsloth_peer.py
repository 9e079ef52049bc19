"""Unsloth as a peer in the throughput benchmark (its own process and site dir: importing it patches transformers).

Unsloth loads models only through ``FastLanguageModel.from_pretrained``, which wants files (with a tokenizer), so a
``save_model`` job first writes the same seeded random model the other paths build in memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

SAVE_ROOT = Path("/tmp/tunelab-bench-models")


def model_dir(job: dict) -> Path:
    return SAVE_ROOT / f"{job['model']}-{job.get('layers') or 'all'}"


def save_random_model(job: dict, device: torch.device) -> dict:
    """Write the job's seeded random model (bf16) and a small tokenizer for Unsloth to load."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    from throughput_worker import model_config

    path = model_dir(job)
    if (path / "config.json").is_file():
        return {"path": str(path), "cached": True}
    torch.manual_seed(job.get("seed", 0))
    with device:
        model = AutoModelForCausalLM.from_config(model_config(job["model"], job.get("layers")), dtype=torch.bfloat16)
    model.save_pretrained(path, max_shard_size="5GB")
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=1000, special_tokens=["<s>", "</s>", "<pad>", "<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(["a small corpus for a tokenizer the benchmark never uses"] * 10, trainer=trainer)
    PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                            unk_token="<unk>").save_pretrained(path)
    return {"path": str(path), "cached": False}


def build_unsloth(job: dict, device: torch.device) -> tuple[Any, Any]:
    """Unsloth's model (LoRA r16 on the 7 projections, its offloaded gradient checkpointing) and AdamW."""
    import unsloth  # noqa: F401  (first: it patches transformers)
    from unsloth import FastLanguageModel

    from throughput_worker import TARGETS

    model, _ = FastLanguageModel.from_pretrained(
        model_name=str(model_dir(job)), max_seq_length=max(job["seq"], 2048), dtype=torch.bfloat16,
        load_in_4bit=job["method"] == "qlora", local_files_only=True)
    model = FastLanguageModel.get_peft_model(
        model, r=job.get("rank", 16), lora_alpha=job.get("alpha", 16), lora_dropout=0, target_modules=TARGETS,
        bias="none", use_gradient_checkpointing="unsloth", random_state=0)
    FastLanguageModel.for_training(model)
    params = [p for p in model.parameters() if p.requires_grad]
    return model, torch.optim.AdamW(params, lr=job.get("lr", 2e-4), weight_decay=0.0)
