"""tunelab's fast single-GPU path for LoRA/QLoRA on Llama-family models (see model.py for the entry point)."""
