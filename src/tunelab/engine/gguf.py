"""GGUF export for Llama-architecture models through the `gguf` package's writer (q8_0, f16, f32).

Supported: ``LlamaForCausalLM`` (default, linear or llama3 RoPE scaling) with a byte-level BPE tokenizer whose
pre-tokenizer is GPT-2's or Llama 3's. Anything else is refused with a message saying what is supported (the
safetensors export still works; llama.cpp's own convert_hf_to_gguf.py covers more architectures).
Conventions follow llama.cpp's converter: tensor names from gguf's TensorNameMap, Q/K rows permuted to
llama.cpp's rotary layout, 1-D tensors kept f32, 2-D tensors whose rows are not a multiple of the block size
fall back to f16. After writing, the file is read back with gguf's reader and every tensor dequantized and
compared with what was written.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from tunelab.core.templates import ChatTemplate

log = logging.getLogger(__name__)

SUPPORTED = "Llama-architecture models (LlamaForCausalLM) with a byte-level BPE tokenizer (GPT-2 or Llama-3 pre-tokenizer)"
LLAMA3_REGEX = (
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
)
# Largest |dequantized - written| allowed, relative to each tensor's max |value| (q8_0 rounds to 1/127 of a block's max).
READBACK_TOLERANCE = {"f32": 0.0, "f16": 1e-3, "q8_0": 1.0 / 127 * 0.51 + 1e-3}


class GgufUnsupported(ValueError):
    """The model or tokenizer is outside what the GGUF writer supports; says what is supported."""


def gguf_file_name(qtype: str) -> str:
    """model-q8_0.gguf, model-f16.gguf ..."""
    return f"model-{qtype}.gguf"


def check_supported(hf_config: Any, tokenizer: Any) -> str:
    """The llama.cpp pre-tokenizer name for this model, or GgufUnsupported naming what is supported."""
    archs = list(getattr(hf_config, "architectures", None) or [])
    if getattr(hf_config, "model_type", None) != "llama" or archs not in ([], ["LlamaForCausalLM"]):
        raise GgufUnsupported(f"GGUF export supports {SUPPORTED}; this model is {archs or hf_config.model_type}")
    rope = _rope(hf_config)
    if rope.get("rope_type", "default") not in ("default", "linear", "llama3"):
        raise GgufUnsupported(f"GGUF export supports default, linear and llama3 RoPE; this model uses {rope.get('rope_type')!r}")
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise GgufUnsupported(f"GGUF export supports {SUPPORTED}; this tokenizer has no tokenizer.json (slow/sentencepiece)")
    spec = json.loads(backend.to_str())
    if spec.get("model", {}).get("type") != "BPE":
        raise GgufUnsupported(f"GGUF export supports {SUPPORTED}; this tokenizer is {spec.get('model', {}).get('type')}")
    return _pre_tokenizer(spec.get("pre_tokenizer") or {})


def _pre_tokenizer(pre: dict) -> str:
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True) and not pre.get("add_prefix_space", False):
        return "gpt-2"
    parts = pre.get("pretokenizers") or []
    if (
        pre.get("type") == "Sequence" and len(parts) == 2 and parts[0].get("type") == "Split"
        and parts[0].get("pattern", {}).get("Regex") == LLAMA3_REGEX
        and parts[1].get("type") == "ByteLevel" and not parts[1].get("use_regex", True)
    ):
        return "llama-bpe"
    raise GgufUnsupported(f"GGUF export supports {SUPPORTED}; this tokenizer's pre-tokenizer is not one of them ({pre.get('type')})")


def _rope(hf_config: Any) -> dict:
    params = dict(getattr(hf_config, "rope_parameters", None) or getattr(hf_config, "rope_scaling", None) or {})
    params.setdefault("rope_theta", getattr(hf_config, "rope_theta", 10000.0))
    return params


def permute_qk(weights: np.ndarray, n_head: int) -> np.ndarray:
    """Reorder Q/K rows from HF's rotate-half layout to llama.cpp's interleaved rotary layout."""
    return weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


def llama3_rope_factors(rope: dict, head_dim: int) -> np.ndarray:
    """llama.cpp's rope_freqs tensor for llama3-style RoPE scaling."""
    base = rope.get("rope_theta", 10000.0)
    freqs = 1.0 / (base ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
    factor, low, high = rope.get("factor", 8.0), rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
    old = rope.get("original_max_position_embeddings", 8192)
    low_wavelen, high_wavelen = old / low, old / high
    out = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            out.append(1.0)
        elif wavelen > low_wavelen:
            out.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, dtype=np.float32)


def write_gguf(model: Any, tokenizer: Any, template: ChatTemplate, folder: Path, qtype: str) -> dict[str, Any]:
    """Write <folder>/model-<qtype>.gguf from an fp32 model and its tokenizer; read it back and check it."""
    import gguf

    pre = check_supported(model.config, tokenizer)
    path = Path(folder) / gguf_file_name(qtype)
    tmp = path.with_name(path.name + ".tmp")
    writer = gguf.GGUFWriter(str(tmp), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    _add_hparams(writer, model.config, qtype)
    _add_vocab(writer, tokenizer, template, pre)
    written = _add_tensors(writer, model, qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.replace(path)
    check = read_back(path, written, qtype)
    log.info("GGUF %s: %d tensors, read back with max relative error %.3g", path.name, check["tensors"], check["max_rel_err"])
    return {"file": path.name, "type": qtype, "pre_tokenizer": pre, "bytes": path.stat().st_size, **check}


def _add_hparams(writer: Any, config: Any, qtype: str) -> None:
    import gguf

    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    rope = _rope(config)
    writer.add_name(Path(str(getattr(config, "_name_or_path", "") or "model")).name or "model")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or heads)
    writer.add_rope_freq_base(float(rope["rope_theta"]))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_rope_dimension_count(head_dim)
    if head_dim != config.hidden_size // heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    if rope.get("rope_type") == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    writer.add_vocab_size(config.vocab_size)
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}
    writer.add_file_type(file_type[qtype])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _add_vocab(writer: Any, tokenizer: Any, template: ChatTemplate, pre: str) -> None:
    import gguf

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    vocab = tokenizer.get_vocab()
    size = max(len(vocab), int(getattr(tokenizer, "vocab_size", 0) or 0))
    by_id = {i: t for t, i in vocab.items()}
    added = {entry["id"]: entry for entry in spec.get("added_tokens", [])}
    tokens, types = [], []
    for i in range(size):
        token = by_id.get(i)
        if token is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(token)
            types.append(gguf.TokenType.CONTROL if added[i].get("special") else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(token)
            types.append(gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    merges = spec.get("model", {}).get("merges") or []
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    stops = [vocab[s] for s in template.stop_strings if s in vocab]
    eos = stops[0] if stops else tokenizer.eos_token_id
    if tokenizer.bos_token_id is not None:
        writer.add_bos_token_id(tokenizer.bos_token_id)
    if eos is not None:
        writer.add_eos_token_id(eos)
        writer.add_eot_token_id(eos)
    if tokenizer.unk_token_id is not None:
        writer.add_unk_token_id(tokenizer.unk_token_id)
    if tokenizer.pad_token_id is not None:
        writer.add_pad_token_id(tokenizer.pad_token_id)
    probe = tokenizer("a", add_special_tokens=True).input_ids
    writer.add_add_bos_token(bool(probe) and probe[0] == tokenizer.bos_token_id)
    writer.add_add_eos_token(bool(probe) and probe[-1] == tokenizer.eos_token_id and len(probe) > 1)
    writer.add_chat_template(template.serving_jinja)


def _gguf_name(name_map: Any, name: str) -> str | None:
    return name_map.get_name(name, try_suffixes=(".weight", ".bias"))


def _add_tensors(writer: Any, model: Any, qtype: str) -> dict[str, tuple[np.ndarray, Any]]:
    """Add every tensor; returns name -> (written float32 values, ggml type) for the read-back check."""
    import gguf

    config = model.config
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    heads, kv_heads = config.num_attention_heads, getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    tied = bool(getattr(config, "tie_word_embeddings", False))
    written: dict[str, tuple[np.ndarray, Any]] = {}
    rope = _rope(config)
    if rope.get("rope_type") == "llama3":
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        written["rope_freqs.weight"] = _add(writer, "rope_freqs.weight", llama3_rope_factors(rope, head_dim), "f32")
    for hf_name, tensor in model.state_dict().items():
        if "rotary_emb" in hf_name or (tied and hf_name == "lm_head.weight"):
            continue
        name = _gguf_name(name_map, hf_name)
        if name is None:
            raise GgufUnsupported(f"GGUF export supports {SUPPORTED}; no GGUF name for tensor {hf_name!r}")
        data = tensor.detach().float().cpu().numpy()
        if hf_name.endswith("q_proj.weight"):
            data = permute_qk(data, heads)
        elif hf_name.endswith("k_proj.weight"):
            data = permute_qk(data, kv_heads)
        written[name] = _add(writer, name, data, qtype)
    return written


def _add(writer: Any, name: str, data: np.ndarray, qtype: str) -> tuple[np.ndarray, Any]:
    import gguf

    data = np.ascontiguousarray(data, dtype=np.float32)
    if data.ndim <= 1 or qtype == "f32":
        writer.add_tensor(name, data)
        return data, gguf.GGMLQuantizationType.F32
    block = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0]
    if qtype == "q8_0" and data.shape[-1] % block == 0:
        quantized = gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0)
        writer.add_tensor(name, quantized, raw_shape=quantized.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        return data, gguf.GGMLQuantizationType.Q8_0
    writer.add_tensor(name, data.astype(np.float16))
    return data, gguf.GGMLQuantizationType.F16


def read_back(path: Path, written: dict[str, tuple[np.ndarray, Any]], qtype: str) -> dict[str, Any]:
    """Read the file with gguf's reader; check names, shapes and types; dequantize and compare values."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    seen = {t.name: t for t in reader.tensors}
    if set(seen) != set(written):
        raise ValueError(f"GGUF read-back: tensors differ (missing {sorted(set(written) - set(seen))[:5]}, extra {sorted(set(seen) - set(written))[:5]})")
    worst = 0.0
    types: dict[str, int] = {}
    for name, (data, ggml_type) in written.items():
        tensor = seen[name]
        if tensor.tensor_type != ggml_type:
            raise ValueError(f"GGUF read-back: {name} is {tensor.tensor_type.name}, expected {ggml_type.name}")
        if tuple(int(d) for d in reversed(tensor.shape)) != data.shape and not (data.ndim == 1 and int(tensor.shape[0]) == data.size):
            raise ValueError(f"GGUF read-back: {name} has shape {list(tensor.shape)}, expected {list(reversed(data.shape))}")
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(data.shape)
        scale = float(np.abs(data).max()) or 1.0
        err = float(np.abs(values.astype(np.float32) - data).max()) / scale
        worst = max(worst, err)
        types[tensor.tensor_type.name] = types.get(tensor.tensor_type.name, 0) + 1
    tolerance = READBACK_TOLERANCE[qtype]
    if worst > tolerance:
        raise ValueError(f"GGUF read-back: values differ by up to {worst:.3g} of the tensor scale (tolerance {tolerance:.3g})")
    arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    return {"tensors": len(written), "tensor_types": types, "max_rel_err": worst, "readback_tolerance": tolerance, "architecture": arch}
