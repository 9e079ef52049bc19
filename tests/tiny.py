"""Tiny models and tokenizers built locally for tests (no hub): a BPE tokenizer trains in about a second."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from tunelab.core.datasets import iter_rows
from tunelab.core.paths import resource_dir

BASE_SPECIALS = ["<s>", "</s>", "<pad>", "<unk>"]


@lru_cache(maxsize=1)
def corpus() -> tuple[str, ...]:
    data = resource_dir("data")
    texts = []
    for name in ("identity.json", "alpaca_demo.json", "text_demo.jsonl"):
        for _, row in iter_rows(data / name):
            texts.append(" ".join(str(v) for v in row.values() if isinstance(v, str)))
    return tuple(texts)


@lru_cache(maxsize=4)
def _trained_bpe(vocab_size: int) -> str:
    """A byte-level BPE trained once on the shipped data (serialised, so each caller gets a fresh copy)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=BASE_SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(corpus(), trainer=trainer)
    return bpe.to_str()


def tiny_tokenizer(specials: list[str] | None = None, vocab_size: int = 600, chat_template: str | None = None,
                   bos: str = "<s>", eos: str = "</s>"):
    """A byte-level BPE tokenizer with the given special tokens registered."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    specials = list(dict.fromkeys(BASE_SPECIALS + [t for t in (specials or []) if t] + [t for t in (bos, eos) if t]))
    bpe = Tokenizer.from_str(_trained_bpe(vocab_size))
    bpe.add_special_tokens(specials)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=bos or None, eos_token=eos, pad_token="<pad>",
                                   unk_token="<unk>", chat_template=chat_template)


def tiny_llama(directory: Path, tokenizer, layers: int = 2, hidden: int = 64, heads: int = 2, seed: int = 0) -> Path:
    """Save a tiny random Llama with ``tokenizer`` into ``directory``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
