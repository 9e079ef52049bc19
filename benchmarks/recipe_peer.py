"""A peer's own recipe on the product benchmark's model and data, in its own process (product_bench.py runs it).

``python benchmarks/recipe_peer.py JOB_JSON`` prints ``RESULT {...}``. ``kind`` is
- ``trl``: transformers + peft + trl's SFTTrainer as their docs show it (LoRA through ``peft_config``, gradient
  checkpointing and packing through SFTConfig, bitsandbytes 4-bit for QLoRA);
- ``unsloth``: Unsloth's recipe (FastLanguageModel.from_pretrained, get_peft_model with its offloaded gradient
  checkpointing, then trl's SFTTrainer), imported first because it patches transformers.
Both train on the alpaca file as chat messages with the same sequence length, batch, rank, steps and learning rate
as `tunelab train`, and report real tokens per second after the warm-up and peak GiB allocated and reserved.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def load(job: dict) -> tuple[Any, Any, Any]:
    """(model, tokenizer, peft_config or None) of the job's recipe."""
    import torch

    dtype = torch.float32 if job["cpu"] else torch.bfloat16
    if job["kind"] == "unsloth":
        import unsloth  # noqa: F401  (first: it patches transformers)
        from unsloth import FastLanguageModel

        model, tok = FastLanguageModel.from_pretrained(
            model_name=job["model"], max_seq_length=job["seq"], dtype=dtype, load_in_4bit=job["method"] == "qlora",
            local_files_only=True)
        model = FastLanguageModel.get_peft_model(
            model, r=job["rank"], lora_alpha=job["alpha"], lora_dropout=0, target_modules=TARGETS, bias="none",
            use_gradient_checkpointing="unsloth", random_state=0)
        return model, tok, None
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    kwargs: dict[str, Any] = {"dtype": dtype, "attn_implementation": "sdpa"}
    if job["method"] == "qlora":
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                           bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype)
    if not job["cpu"]:
        kwargs["device_map"] = {"": 0}
    model = AutoModelForCausalLM.from_pretrained(job["model"], **kwargs)
    lora = LoraConfig(r=job["rank"], lora_alpha=job["alpha"], lora_dropout=0.0, target_modules=TARGETS,
                      task_type="CAUSAL_LM")
    return model, AutoTokenizer.from_pretrained(job["model"]), lora


def main(argv: list[str]) -> int:
    job = json.loads(argv[0])
    model, tok, lora = load(job)
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    rows = json.loads(open(job["data"]).read())
    data = Dataset.from_list([{"messages": [{"role": "user", "content": r["instruction"]},
                                            {"role": "assistant", "content": r["output"]}]} for r in rows])
    marks: list[tuple[int, float, int]] = []
    counted = {"tokens": 0, "shapes": []}  # real tokens of every batch the collator built, counted here

    class Clock(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
            if logs and "loss" in logs:
                marks.append((state.global_step, time.perf_counter(), state.num_input_tokens_seen or 0,
                              counted["tokens"]))

    config = SFTConfig(
        output_dir="/tmp/recipe-peer", max_length=job["seq"], packing=job["packing"],
        per_device_train_batch_size=job["batch"], gradient_checkpointing=job["kind"] == "trl",
        gradient_checkpointing_kwargs={"use_reentrant": False}, max_steps=job["warmup"] + job["steps"],
        learning_rate=2e-4, logging_steps=1, save_strategy="no", report_to=[], bf16=not job["cpu"],
        use_cpu=job["cpu"], include_num_input_tokens_seen="non_padding", dataloader_num_workers=0, seed=42,
        disable_tqdm=True)
    trainer = SFTTrainer(model=model, args=config, train_dataset=data, processing_class=tok, peft_config=lora,
                         callbacks=[Clock()])
    trainer.data_collator = _counting(trainer.data_collator, counted)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    after = [m for m in marks if m[0] >= job["warmup"]]
    (s0, t0, n0, c0), (s1, t1, n1, c1) = after[0], after[-1]
    # tokens/s from our own count of the collated batches (the trainer's num_input_tokens_seen is shown beside it:
    # a patched trainer may count differently)
    result = {"tokens_per_s": round((c1 - c0) / (t1 - t0), 1), "step_s": round((t1 - t0) / (s1 - s0), 4),
              "tokens_per_step": round((c1 - c0) / (s1 - s0)), "measured_steps": s1 - s0,
              "trainer_tokens_per_step": round((n1 - n0) / (s1 - s0)), "batch_shapes": counted["shapes"][:4]}
    if torch.cuda.is_available():
        result.update(peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2),
                      peak_reserved_gib=round(torch.cuda.max_memory_reserved() / 2**30, 2))
    print("RESULT " + json.dumps(result), flush=True)
    return 0


def _counting(collate: Any, counted: dict) -> Any:
    """The collator, counting the real (non-padding) tokens and the shapes of the batches it builds."""

    def counting(features: Any) -> Any:
        batch = collate(features)
        ids = batch["input_ids"]
        mask = batch.get("attention_mask")
        counted["tokens"] += int(mask.sum()) if mask is not None else int(ids.numel())
        counted["shapes"].append(list(ids.shape))
        return batch

    return counting


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
