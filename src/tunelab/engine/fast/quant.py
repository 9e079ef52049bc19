"""Quantize an in-memory model's linear layers to bitsandbytes 4-bit, as ``from_pretrained(quantization_config=
BitsAndBytesConfig(load_in_4bit=True, ...))`` would: for benchmarks and tests that build models from a config
(random weights, no files), where the loader cannot be used."""

from __future__ import annotations

from typing import Any

import torch


def quantize_model_4bit(model: Any, compute_dtype: torch.dtype, quant_type: str = "nf4", double_quant: bool = True,
                        skip: tuple[str, ...] = ("lm_head",)) -> Any:
    """Replace every nn.Linear (except ``skip``) by a bnb Linear4bit holding the same weights, quantized on the
    weight's device; mark the model as loaded in 4 bits (what peft looks for)."""
    import bitsandbytes as bnb

    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is not torch.nn.Linear or name in skip:
                continue
            device = child.weight.device
            new = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                    compute_dtype=compute_dtype, compress_statistics=double_quant,
                                    quant_type=quant_type, device="meta")
            new.weight = bnb.nn.Params4bit(child.weight.data, requires_grad=False, compress_statistics=double_quant,
                                           quant_type=quant_type)
            if child.bias is not None:
                new.bias = torch.nn.Parameter(child.bias.data, requires_grad=False)
            new.weight = new.weight._quantize(device) if hasattr(new.weight, "_quantize") else new.weight.to(device)
            setattr(parent, name, new)
            del child
    model.is_loaded_in_4bit = True
    return model
