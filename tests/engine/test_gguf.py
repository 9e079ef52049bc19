"""GGUF export: files read back with gguf's reader (names, shapes, types, values) and, where llama.cpp's Python
binding is installed, run in llama.cpp with the same tokens and logits as transformers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.tiny import tiny_tokenizer


@pytest.fixture(scope="module")
def gqa_llama3(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, object, object]:
    """A tiny Llama with grouped-query attention, llama3 RoPE scaling and tied embeddings."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tunelab.core.templates import registry

    template = registry().get("chatml")
    tokenizer = tiny_tokenizer(["<|im_start|>", "<|im_end|>"], chat_template=template.source, eos="<|im_end|>")
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True, rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for param in model.parameters():  # larger weights than the init, so logits differ visibly per token
            param.mul_(3.0 if param.dim() > 1 else 1.0)
    return model, tokenizer, template


@pytest.mark.parametrize("qtype", ["f16", "q8_0"])
def test_gguf_reads_back(gqa_llama3, tmp_path: Path, qtype: str) -> None:
    import gguf

    from tunelab.engine.gguf import write_gguf

    model, tokenizer, template = gqa_llama3
    report = write_gguf(model, tokenizer, template, tmp_path, qtype)
    reader = gguf.GGUFReader(str(tmp_path / report["file"]))
    names = {t.name: t for t in reader.tensors}
    assert "output.weight" not in names and "rope_freqs.weight" in names  # tied embeddings; llama3 RoPE factors
    assert int(reader.fields["llama.attention.head_count_kv"].parts[-1][0]) == 2
    expected = {"f16": gguf.GGMLQuantizationType.F16, "q8_0": gguf.GGMLQuantizationType.Q8_0}[qtype]
    assert names["blk.1.ffn_down.weight"].tensor_type == expected
    assert report["max_rel_err"] <= report["readback_tolerance"] and report["tensors"] == len(names)
    assert bytes(reader.fields["tokenizer.ggml.pre"].parts[-1]).decode() == "gpt-2"


def test_gguf_refuses_other_architectures(tmp_path: Path) -> None:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from tunelab.core.templates import registry
    from tunelab.engine.gguf import GgufUnsupported, write_gguf

    tokenizer = tiny_tokenizer(["<|im_start|>", "<|im_end|>"], eos="<|im_end|>")
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2))
    with pytest.raises(GgufUnsupported, match="supports Llama-architecture models"):
        write_gguf(model, tokenizer, registry().get("chatml"), tmp_path, "f16")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("qtype,tolerance", [("f16", 0.02), ("q8_0", 0.05)])
def test_gguf_runs_in_llama_cpp_like_transformers(gqa_llama3, tmp_path: Path, qtype: str, tolerance: float) -> None:
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (optional: it builds from source)")
    import torch

    from tunelab.engine.gguf import write_gguf

    model, tokenizer, template = gqa_llama3
    report = write_gguf(model, tokenizer, template, tmp_path, qtype)
    text = template.render([{"role": "user", "content": "Who are you? Say 12 words, please."}], add_generation_prompt=True).text
    ids = tokenizer(text, add_special_tokens=False).input_ids
    llm = llama_cpp.Llama(model_path=str(tmp_path / report["file"]), n_ctx=128, logits_all=True, verbose=False)
    assert llm.tokenize(text.encode(), add_bos=False, special=True) == ids
    llm.eval(ids)
    theirs = np.array(llm.scores[: len(ids)])
    with torch.no_grad():
        ours = model(torch.tensor([ids])).logits[0].numpy()
    assert np.abs(theirs - ours).max() <= tolerance * np.abs(ours).max()
    assert (theirs.argmax(-1) == ours.argmax(-1)).mean() >= 0.9
