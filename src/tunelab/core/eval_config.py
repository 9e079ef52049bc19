"""EvalConfig: the one schema for an evaluation job (CLI flags, the Eval tab and eval.yaml all map onto it).

An evaluation scores the base model and the fine-tuned one side by side:
- ``loss``: token loss and perplexity on a dataset (default: the run's validation split);
- ``predict``: generate for the dataset's prompts; BLEU-4, ROUGE-1/2/L, and exact match for short references;
- ``bench``: lm-evaluation-harness tasks (registered names, or local YAML task files / folders);
- ``preference``: how often the chosen reply beats the rejected one (log-likelihood, DPO's implicit reward, or a
  reward model's score), on preference pairs;
- ``reward``: mean reward of a GRPO/RLOO run's reward functions (or ``reward_funcs``) on held-out prompts.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tunelab.core.schema import validate_schema

Metric = Literal["loss", "predict", "bench", "preference", "reward"]
METRICS: tuple[str, ...] = get_args(Metric)
EvalDtype = Literal["auto", "bf16", "fp16", "fp32"]
EvalEngine = Literal["auto", "hf", "vllm"]


def _split(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class EvalConfig(BaseModel):
    """Everything needed to reproduce an evaluation job."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    run: str | None = Field(None, description="Training run directory to evaluate.")
    model: str | None = Field(None, description="Base model (folder, hub id or 'demo'); default: the adapter's base.")
    adapter: str | None = Field(None, description="PEFT adapter folder (fine-tuned side).")
    template: str = Field("auto", description="Chat template family, or 'auto' (the run's).")
    metrics: list[Metric] = Field(
        ["loss"], description="What to score: loss, predict, bench, preference, reward (default for a preference "
        "run: preference; for a grpo/rloo run: reward).")
    dataset: list[str] = Field([], description="Datasets (registry names or files); empty: the run's validation split.")
    dataset_dir: str | None = Field(None, description="Folder holding dataset_info.json (default: the run's, else data/).")
    max_samples: int | None = Field(200, ge=1, description="Score at most this many examples per dataset.")
    cutoff_len: int | None = Field(None, ge=8, description="Maximum tokens per example (default: the run's).")
    batch_size: int = Field(4, ge=1, description="Examples per forward pass.")
    max_new_tokens: int = Field(64, ge=1, description="predict: tokens generated per prompt (greedy).")
    reward_funcs: list[str] = Field(
        [], description="reward: reward functions (as the run config's); empty: the grpo/rloo run's own.")
    tasks: list[str] = Field([], description="bench: lm-eval task names, or local task YAML files or folders.")
    limit: int | None = Field(None, ge=1, description="bench: quick mode, at most N examples per task.")
    num_fewshot: int | None = Field(None, ge=0, description="bench: few-shot examples per prompt.")
    chat_template: bool = Field(False, description="bench: wrap task prompts in the model's chat template.")
    compare_base: bool = Field(True, description="Also score the base model and report deltas.")
    bootstrap: int = Field(1000, ge=0, description="Bootstrap resamples for corpus-level standard errors.")
    seed: int = Field(42, description="Seed for bootstrap resampling and lm-eval.")
    dtype: EvalDtype = Field("auto", description="Weight dtype (auto: fp32 on CPU, bf16 on GPUs that support it).")
    engine: EvalEngine = Field(
        "auto", description="predict and bench on: hf (transformers), vllm (batched, the adapter per request; vLLM here or "
        "TUNELAB_VLLM_PYTHON), auto (vllm on a GPU when available, else hf).")
    output_dir: str | None = Field(None, description="Job folder (default: <run>/evals/<job-id>).")
    trust_remote_code: bool = Field(False, description="Allow model code from the model folder or hub.")

    _split_lists = field_validator("metrics", "dataset", "tasks", mode="before")(classmethod(lambda cls, v: _split(v)))

    @field_validator("reward_funcs", mode="before")
    @classmethod
    def _one_reward(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value  # never split: a regex may hold commas

    @model_validator(mode="after")
    def _consistent(self) -> "EvalConfig":
        if self.run and (self.model or self.adapter):
            raise ValueError("give either run or model/adapter, not both")
        if not (self.run or self.model or self.adapter):
            raise ValueError("give a training run (run=RUN_DIR) or a model (model=M, optionally adapter=A)")
        if not self.metrics:
            raise ValueError(f"metrics: choose at least one of {', '.join(METRICS)}")
        if "bench" in self.metrics and not self.tasks:
            raise ValueError("tasks: 'bench' needs at least one lm-eval task name or local task YAML")
        if {"loss", "predict", "preference"} & set(self.metrics) and not self.dataset and not self.run:
            raise ValueError("dataset: give a dataset for loss/predict/preference (the validation split default needs a run)")
        if "reward" in self.metrics and not self.run and not (self.reward_funcs and self.dataset):
            raise ValueError("metrics: 'reward' needs a grpo/rloo run, or reward_funcs=... and dataset=... (prompts)")
        return self


def validate_eval_config(data: dict[str, Any], source: str = "eval options") -> EvalConfig:
    """Build an EvalConfig, raising ConfigError with one line per problem."""
    return validate_schema(EvalConfig, data, source, "eval options")
