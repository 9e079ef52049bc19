"""Write a Qwen2.5-VL model with random weights (7B shape by default) for GPU throughput runs; no download.

    python benchmarks/make_random_qwen25vl.py OUT_DIR [--tiny] [--tokenizer DIR]

The tokenizer is the demo tokenizer (or DIR's) plus Qwen's vision tokens (the embedding keeps Qwen's 152064 rows);
the image processor is Qwen2-VL's with its usual patch 14 / merge 2. Needs torchvision (transformers builds Qwen-VL
processors, video processor included, only with it).
"""

from __future__ import annotations

import sys
from pathlib import Path

SEVEN_B = dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
               num_key_value_heads=4, mrope=[16, 24, 24])
VISION_7B = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                 fullatt_block_indexes=[7, 15, 23, 31], window_size=112)
TINY = dict(hidden_size=256, intermediate_size=688, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
            mrope=[8, 12, 12])
VISION_TINY = dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=2, out_hidden_size=256,
                   fullatt_block_indexes=[1], window_size=112)


def main(argv: list[str]) -> None:
    """Build and save the model, processor and chat template."""
    import importlib.util

    import torch
    from transformers import PreTrainedTokenizerFast, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor

    from tunelab.core.templates import registry

    if importlib.util.find_spec("torchvision") is None:
        sys.exit("make_random_qwen25vl: transformers builds Qwen-VL processors only with torchvision; install it")
    from transformers import Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    out, tiny = Path(argv[0]), "--tiny" in argv
    text, vision = (TINY, VISION_TINY) if tiny else (SEVEN_B, VISION_7B)
    if "--tokenizer" in argv:
        source = Path(argv[argv.index("--tokenizer") + 1])
    else:
        from tunelab.engine.demo import build_demo_model

        source = build_demo_model()
    tokenizer = PreTrainedTokenizerFast.from_pretrained(source)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]})
    tokenizer.chat_template = registry().get("qwen2").source
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")}
    mrope = text["mrope"]
    config = Qwen2_5_VLConfig(
        text_config={**{k: v for k, v in text.items() if k != "mrope"}, "vocab_size": 152064,
                     "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": mrope},
                     "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
                     "pad_token_id": tokenizer.pad_token_id, "tie_word_embeddings": False},
        vision_config=vision, image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)  # built in bf16 directly: no fp32 copy of 8B parameters
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = Qwen2_5_VLForConditionalGeneration(config)
    torch.set_default_dtype(torch.float32)
    model.save_pretrained(out)
    processor = Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessor(), tokenizer=tokenizer,
                                    video_processor=Qwen2VLVideoProcessor(), chat_template=tokenizer.chat_template)
    processor.save_pretrained(out)
    print(f"saved {sum(p.numel() for p in model.parameters()) / 1e9:.2f}B parameters to {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
