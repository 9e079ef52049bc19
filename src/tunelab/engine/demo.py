"""The embedded demo model: a tiny Llama and a BPE tokenizer trained on the shipped data, built locally.

Deterministic (fixed seed, fixed data), no download, a few seconds on a laptop CPU. Heads are 64 wide so
vLLM's CPU build can serve it too. Its chat template is the registry's ``chatml`` family.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from tunelab.core.datasets import iter_rows
from tunelab.core.paths import home_dir, resource_dir
from tunelab.core.templates import registry

log = logging.getLogger(__name__)
Progress = Callable[[int, int], None]  # (done, total) pre-training steps

DEMO_NAME = "demo"
DEMO_VERSION = 1
PRETRAIN_STEPS = 150
SPECIAL_TOKENS = ["<s>", "</s>", "<pad>", "<unk>", "<|im_start|>", "<|im_end|>"]
DEMO_SHAPE = dict(
    hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
    max_position_embeddings=2048, rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=False,
)


def demo_model_dir() -> Path:
    """Where the demo model lives: $TUNELAB_HOME/models/demo-v<N>."""
    return home_dir() / "models" / f"demo-v{DEMO_VERSION}"


def _corpus() -> Iterator[str]:
    data = resource_dir("data")
    for name in ("identity.json", "alpaca_demo.json", "preference_demo.json", "text_demo.jsonl"):
        for _, row in iter_rows(data / name):
            yield " ".join(str(v) for v in row.values() if isinstance(v, str))


def build_tokenizer(texts: list[str], vocab_size: int, chat_template: str | None = None):
    """Train a byte-level BPE tokenizer and wrap it as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<s>", eos_token="<|im_end|>", pad_token="<pad>", unk_token="<unk>",
        chat_template=chat_template, model_max_length=DEMO_SHAPE["max_position_embeddings"],
    )


def _pretrain_texts(template) -> list[str]:
    """The alpaca demo rendered as chat, plus the text corpus (never the identity data: that is the demo)."""
    data = resource_dir("data")
    texts = []
    for _, row in iter_rows(data / "alpaca_demo.json"):
        prompt = f"{row['instruction']}\n{row['input']}" if row["input"] else row["instruction"]
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": row["output"]}]
        texts.append(template.render(messages).text)
    texts += [row["text"] for _, row in iter_rows(data / "text_demo.jsonl")]
    return texts


def _pretrain(model, tokenizer, template, steps: int = PRETRAIN_STEPS, batch: int = 12, length: int = 80,
              progress: Progress | None = None) -> float:
    """A short, seeded pre-training so the demo model writes words before anyone fine-tunes it; ``progress``
    hears (done, total) every 10 steps."""
    import random

    import torch

    rng = random.Random(0)
    texts = _pretrain_texts(template)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps, pct_start=0.1)
    model.train()
    loss = torch.tensor(0.0)
    for done in range(steps):
        if progress is not None and done and done % 10 == 0:
            progress(done, steps)
        encoded = tokenizer(rng.sample(texts, batch), padding="max_length", truncation=True, max_length=length, return_tensors="pt")
        labels = encoded["input_ids"].masked_fill(encoded["attention_mask"] == 0, -100)
        loss = model(**encoded, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
    model.eval()
    log.info("demo model pre-trained for %d steps, last loss %.3f", steps, loss.item())
    return loss.item()


def build_demo_model(target: Path | None = None, force: bool = False, progress: Progress | None = None) -> Path:
    """Build the demo model into ``target`` (default demo_model_dir()) unless it is already there; ``progress``
    hears (done, total) pre-training steps while it is built."""
    target = Path(target or demo_model_dir())
    if (target / "config.json").is_file() and not force:
        return target
    if progress is not None:
        progress(0, PRETRAIN_STEPS)
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    template = registry().get("chatml")
    tokenizer = build_tokenizer(list(_corpus()), vocab_size=4096, chat_template=template.source)
    config = LlamaConfig(
        vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, **DEMO_SHAPE,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    from tunelab.engine.model import set_cpu_threads

    threads = torch.get_num_threads()
    set_cpu_threads(model)  # one thread for this small model: 15 steps took 15 s, not 120 s, on a loaded 2-core machine
    try:
        _pretrain(model, tokenizer, template, progress=progress)
    finally:
        torch.set_num_threads(threads)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        max_new_tokens=64,
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".demo-", dir=target.parent))
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    (staging / "tunelab.json").write_text(json.dumps({"name": DEMO_NAME, "version": DEMO_VERSION, "template": "chatml"}))
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    log.info("built the demo model in %s", target)
    return target
