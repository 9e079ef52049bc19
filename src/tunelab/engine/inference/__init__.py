"""Inference engines: ``hf`` (transformers + peft), ``vllm`` (in-process or `vllm serve`) and ``openai`` (any
OpenAI-compatible server). All share engine.inference.base.Engine; heavy libraries are imported inside."""
