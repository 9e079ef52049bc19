"""RunConfig: the one schema for a training run.

YAML files, `key=value` CLI overrides, validation messages and the web UI form are all derived from this
class. Adding a hyper-parameter is one field here. Field metadata (``group``, ``main``) tells the UI where a
field goes; everything not marked ``main`` lands in the generated "Advanced" section.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tunelab.core.schema import ConfigError, choices_of, validate_schema
from tunelab.core.stages import STAGE_NAMES

Stage = Literal["pt", "sft", "rm", "dpo", "orpo", "simpo", "kto", "grpo", "rloo"]
DpoLoss = Literal[
    "sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot", "aot_unpaired",
    "apo_zero", "apo_down", "discopop", "sigmoid_norm",
]
GrpoLoss = Literal["dapo", "grpo", "dr_grpo", "bnpo"]
GenerationEngine = Literal["auto", "hf", "vllm"]
Method = Literal["full", "freeze", "lora", "qlora"]
Quantization = Literal["none", "4bit", "8bit"]
Precision = Literal["auto", "bf16", "fp16", "fp32"]
Attention = Literal["auto", "eager", "sdpa", "flex_attention", "flash_attention_2"]
Scheduler = Literal["linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"]
Optimizer = Literal["adamw_torch", "adamw_torch_fused", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit", "sgd", "adafactor"]
Booster = Literal["auto", "none", "fast", "liger"]
Checkpointing = Literal["auto", "none", "mlp", "full", "offload"]
Reporter = Literal["tensorboard", "wandb", "mlflow"]
Strategy = Literal["none", "ddp", "fsdp2", "deepspeed_zero2", "deepspeed_zero3"]


def _field(
    default: Any, help: str, group: str, main: bool = False, stages: tuple[str, ...] | None = None, **kwargs: Any
) -> Any:
    """A RunConfig field: its UI group, whether it shows outside "Advanced", and the stages that use it
    (None: every stage)."""
    extra: dict[str, Any] = {"group": group, "main": main}
    if stages is not None:
        unknown = set(stages) - set(STAGE_NAMES)
        if unknown:
            raise ValueError(f"unknown stages {sorted(unknown)} in a field definition")
        extra["stages"] = list(stages)
    return Field(default, description=help, json_schema_extra=extra, **kwargs)


NOT_PT = tuple(s for s in STAGE_NAMES if s != "pt")
PAIRED = ("dpo", "orpo", "simpo")
RL = ("grpo", "rloo")


class RunConfig(BaseModel):
    """Everything needed to reproduce a training run."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())

    # -- model ---------------------------------------------------------------------------------------------
    model: str = _field("demo", "Local model folder or hub id; 'demo' is the embedded CPU demo model.", "model", True)
    template: str = _field(
        "auto", "Chat template family, or 'auto' (the model's own, else the catalog's).", "model", True, stages=NOT_PT)
    dtype: Precision = _field("auto", "Weight dtype when loading the model.", "model")
    quantization: Quantization = _field("none", "Load the base weights quantized with bitsandbytes.", "model", True)
    quant_type: Literal["nf4", "fp4"] = _field("nf4", "4-bit data type.", "model")
    double_quant: bool = _field(True, "Quantize the 4-bit quantization constants too.", "model")
    attn_implementation: Attention = _field("auto", "Attention kernel.", "model")
    trust_remote_code: bool = _field(False, "Allow model code from the model folder or hub.", "model")

    # -- method --------------------------------------------------------------------------------------------
    stage: Stage = _field(
        "sft", "Training stage: pt (pre-training), sft (supervised fine-tuning), rm (reward model), dpo, orpo, "
        "simpo, kto (preference tuning), grpo, rloo (reinforcement learning with reward functions).", "method", True)
    method: Method = _field("lora", "full, freeze (train the last layers), lora, or qlora (LoRA on 4-bit).", "method", True)
    freeze_trainable_layers: int = _field(2, "freeze: how many of the last layers train.", "method", ge=1)
    lora_rank: int = _field(8, "LoRA rank r.", "method", True, ge=1)
    lora_alpha: int | None = _field(None, "LoRA alpha (default 2 x rank).", "method", ge=1)
    lora_dropout: float = _field(0.0, "LoRA dropout.", "method", ge=0.0, lt=1.0)
    lora_target: str = _field("all", "Modules LoRA adapts: 'all' linear layers, or comma-separated names.", "method")
    use_dora: bool = _field(False, "Weight-decomposed LoRA (DoRA).", "method")
    use_rslora: bool = _field(False, "Rank-stabilised LoRA scaling.", "method")
    pissa_init: bool = _field(False, "Initialise LoRA from principal singular vectors (PiSSA).", "method")
    loraplus_lr_ratio: float | None = _field(None, "LoRA+: learning-rate ratio of B over A (e.g. 16).", "method", gt=0)

    # -- vision-language models (sft with images; the language model always trains) ----------------------
    train_projector: bool = _field(
        False, "VLM: also train the projector between vision tower and language model (fully, also under LoRA).",
        "method", stages=("sft",))
    train_vision_tower: bool = _field(
        False, "VLM: also train the vision tower (LoRA methods: LoRA on its linear layers too).", "method",
        stages=("sft",))

    # -- preference and RL stages (each field shows only for the stages that use it) -----------------------
    beta: float = _field(
        0.1, "Strength of the preference/RL objective: DPO/KTO/SimPO beta, ORPO lambda, GRPO/RLOO KL coefficient "
        "(0: no KL term).", "stage", True, stages=(*PAIRED, "kto", *RL), ge=0.0)
    dpo_loss: DpoLoss = _field("sigmoid", "DPO loss type (trl's DPO losses).", "stage", True, stages=("dpo",))
    label_smoothing: float = _field(
        0.0, "DPO: probability that a preference label is flipped (robust, exo_pair losses).", "stage",
        stages=("dpo",), ge=0.0, lt=0.5)
    ref_model: str = _field(
        "base", "Reference model: 'base' (LoRA: the adapter-disabled base; otherwise a frozen copy), a model folder "
        "or id, or 'none' (reference-free).", "stage", True, stages=("dpo", "kto"))
    simpo_gamma: float = _field(0.5, "SimPO target reward margin (gamma).", "stage", stages=("simpo",), ge=0.0)
    kto_desirable_weight: float = _field(1.0, "KTO weight of desirable examples.", "stage", stages=("kto",), gt=0.0)
    kto_undesirable_weight: float = _field(1.0, "KTO weight of undesirable examples.", "stage", stages=("kto",), gt=0.0)
    reward_funcs: list[str] = _field(
        ["think_format"], "GRPO/RLOO reward functions, several at once: exact_answer, think_format, regex:PATTERN, "
        "length:N (target words), or path/to/file.py:function.", "stage", True, stages=RL)
    reward_weights: list[float] | None = _field(
        None, "GRPO/RLOO weight of each reward function (default: 1 each).", "stage", stages=RL)
    num_generations: int = _field(4, "GRPO/RLOO completions sampled per prompt; batch_size counts completions, so it must divide batch_size x gradient_accumulation_steps.", "stage", True, stages=RL, ge=2)
    max_completion_length: int = _field(
        64, "GRPO/RLOO: most tokens generated per completion.", "stage", True, stages=RL, ge=1)
    temperature: float = _field(1.0, "GRPO/RLOO sampling temperature.", "stage", stages=RL, gt=0.0)
    grpo_loss: GrpoLoss = _field("dapo", "GRPO loss aggregation (trl's loss types).", "stage", stages=("grpo",))
    generation_engine: GenerationEngine = _field(
        "auto", "GRPO/RLOO generation: auto (vLLM when importable and on a GPU, else transformers), hf, vllm.", "stage",
        stages=RL)

    # -- data ----------------------------------------------------------------------------------------------
    dataset: list[str] = _field(["identity"], "Dataset names from the registry, or file paths.", "data", True)
    dataset_dir: str | None = _field(None, "Folder holding dataset_info.json (default: the shipped data/).", "data")
    cutoff_len: int = _field(1024, "Maximum tokens per example; longer ones are cut (and counted).", "data", True, ge=8)
    packing: bool = _field(
        False, "Pack several examples per row; attention stays within each example.", "data", stages=("pt", "sft"))
    train_on_prompt: bool = _field(
        False, "Also train on prompt tokens (not only assistant replies).", "data", stages=("sft",))
    mask_history: bool = _field(
        False, "Train only on the last assistant turn of each conversation.", "data", stages=("sft",))
    val_size: float = _field(0.0, "Fraction (<1) or number (>=1) of examples held out for eval_loss.", "data", ge=0.0)
    max_samples: int | None = _field(None, "Use at most this many examples per dataset.", "data", ge=1)
    preprocessing_num_workers: int = _field(
        0, "Processes that tokenize the data (0: one per CPU core).", "data", ge=0)
    system_prompt: str | None = _field(
        None, "System prompt added to conversations that have none.", "data", stages=NOT_PT)

    # -- training ------------------------------------------------------------------------------------------
    learning_rate: float = _field(2e-4, "Peak learning rate.", "train", True, gt=0.0)
    num_epochs: float = _field(3.0, "Epochs (ignored when max_steps > 0).", "train", True, gt=0.0)
    max_steps: int = _field(-1, "Stop after this many optimizer steps (-1: use num_epochs).", "train", True, ge=-1)
    batch_size: int = _field(2, "Examples per device per step.", "train", True, ge=1)
    gradient_accumulation_steps: int = _field(1, "Steps accumulated per optimizer update.", "train", ge=1)
    lr_scheduler: Scheduler = _field("cosine", "Learning-rate schedule.", "train")
    warmup_ratio: float = _field(0.0, "Fraction of steps for linear warm-up.", "train", ge=0.0, le=1.0)
    weight_decay: float = _field(0.0, "AdamW weight decay.", "train", ge=0.0)
    max_grad_norm: float = _field(1.0, "Gradient clipping norm (0: off).", "train", ge=0.0)
    optimizer: Optimizer = _field("adamw_torch", "Optimizer (8-bit and paged ones need bitsandbytes).", "train")
    seed: int = _field(42, "Random seed.", "train")
    precision: Precision = _field("auto", "Compute precision: auto = bf16 on GPUs that support it, else fp32.", "train")
    gradient_checkpointing: bool = _field(False, "Recompute activations in backward to save memory.", "train")
    neftune_alpha: float | None = _field(
        None, "NEFTune embedding-noise alpha (e.g. 5).", "train", stages=("pt", "sft"), gt=0)
    booster: Booster = _field(
        "auto", "Speed-ups: auto (tunelab's fast path on a CUDA GPU where the model supports it, else plain HF), "
        "fast, liger (liger-kernel), none (plain HF).", "train")
    fast_kernels: bool = _field(
        True, "Fast path: Triton RMSNorm/RoPE/SwiGLU/cross-entropy kernels (off: PyTorch ops).", "train")
    fast_fused_ce: bool = _field(True, "Fast path: LM head + cross-entropy in chunks, never the full logits.", "train")
    fast_padding_free: bool = _field(True, "Fast path: skip pad tokens; attention stays within each example.", "train")
    fast_checkpointing: Checkpointing = _field(
        "auto", "Fast path activations: auto (offload if gradient_checkpointing, else none), none, mlp (recompute "
        "the MLP's gate/up), full (recompute layers), offload (recompute; layer inputs in CPU RAM).", "train")
    fast_fused_optimizer: bool = _field(
        True, "Fast path: the fused AdamW kernel (adamw_torch -> adamw_torch_fused).", "train")

    # -- distributed (several processes, GPUs or hosts; see services/launch.py) --------------------------------
    strategy: Strategy = _field(
        "none", "Several processes: none (one process), ddp, fsdp2 (PyTorch FSDP2), deepspeed_zero2, "
        "deepspeed_zero3.", "distributed")
    offload: bool = _field(False, "fsdp2/deepspeed: keep optimizer state (ZeRO-3 and FSDP2: also parameters) in CPU RAM.", "distributed")
    nproc_per_node: int = _field(1, "Processes per host (one per GPU).", "distributed", ge=1)
    nnodes: int = _field(1, "Hosts taking part; start the same config on each with its node_rank.", "distributed", ge=1)
    node_rank: int = _field(0, "This host's index (0 .. nnodes-1); node 0 writes status, events and weights.", "distributed", ge=0)
    master_addr: str = _field("127.0.0.1", "Several hosts: address of node 0 (the rendezvous).", "distributed")
    master_port: int = _field(29500, "Several hosts: rendezvous port on node 0.", "distributed", ge=1, le=65535)
    collective_timeout_s: int = _field(600, "Seconds a collective may wait for a missing rank before failing.", "distributed", ge=10)
    fsdp_config: str | None = _field(None, "fsdp2: your own FSDP config JSON (replaces the generated one).", "distributed")
    deepspeed_config: str | None = _field(None, "deepspeed_*: your own DeepSpeed config JSON (replaces the generated one).", "distributed")

    # -- output and logging --------------------------------------------------------------------------------
    output_dir: str | None = _field(None, "Run directory (default: runs/<time>-<model>-<method>).", "output")
    logging_steps: int = _field(1, "Log every N steps.", "output", ge=1)
    save_steps: int = _field(100, "Save a checkpoint every N steps.", "output", ge=1)
    save_total_limit: int | None = _field(2, "Keep at most this many checkpoints.", "output", ge=1)
    eval_steps: int | None = _field(None, "Evaluate every N steps (default: at logging-save cadence).", "output", ge=1)
    report_to: list[Reporter] = _field(["tensorboard"], "Loggers: tensorboard, wandb, mlflow.", "output")
    resume: bool = _field(False, "Continue from the last checkpoint in output_dir.", "output")

    @field_validator("dataset", mode="before")
    @classmethod
    def _split_datasets(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("reward_funcs", mode="before")
    @classmethod
    def _one_reward(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value  # never split on commas: a regex may hold them

    @field_validator("report_to", mode="before")
    @classmethod
    def _split_reporters(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [] if value in ("", "none") else [part.strip() for part in value.split(",")]
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "RunConfig":
        if self.method == "qlora" and self.quantization == "none":
            object.__setattr__(self, "quantization", "4bit")
        if self.quantization != "none" and self.method not in ("lora", "qlora"):
            raise ValueError(f"quantization: {self.quantization!r} needs method 'lora' or 'qlora', not {self.method!r}")
        if not self.dataset:
            raise ValueError("dataset: give at least one dataset name or file")
        self._only_stage_fields()
        if self.stage in RL:
            self._check_rl()
        from tunelab.core.distributed import check_distributed

        check_distributed(self)
        return self

    def _check_rl(self) -> None:
        """Reward specs resolve (no user code runs here) and the generation batch holds whole prompt groups."""
        from tunelab.core.rewards import check_spec

        if not self.reward_funcs:
            raise ValueError("reward_funcs: give at least one reward function")
        object.__setattr__(self, "reward_funcs", [check_spec(spec) for spec in self.reward_funcs])
        if self.reward_weights is not None and len(self.reward_weights) != len(self.reward_funcs):
            raise ValueError(
                f"reward_weights: {len(self.reward_weights)} weights for {len(self.reward_funcs)} reward functions"
            )
        world = self.world_size
        completions = self.batch_size * self.gradient_accumulation_steps * world
        if completions % self.num_generations:
            raise ValueError(
                f"num_generations: {self.num_generations} must divide batch_size x gradient_accumulation_steps"
                f"{' x processes' if world > 1 else ''} ({self.batch_size} x {self.gradient_accumulation_steps}"
                f"{f' x {world}' if world > 1 else ''} = {completions} completions per step)"
            )
        if self.val_size > 0 and (self.batch_size * world) % self.num_generations:
            raise ValueError(
                f"num_generations: {self.num_generations} must divide batch_size ({self.batch_size})"
                f"{f' x {world} processes' if world > 1 else ''} when val_size > 0 (each eval batch holds whole prompt groups)"
            )

    def _only_stage_fields(self) -> None:
        """A value set for a field that the chosen stage does not use is a mistake, not something to ignore."""
        for name in self.model_fields_set:
            stages = field_stages(name)
            if stages is None or self.stage in stages:
                continue
            default = RunConfig.model_fields[name].default
            if getattr(self, name) != default:
                raise ValueError(
                    f"{name}: used by stage{'s' if len(stages) > 1 else ''} {', '.join(stages)}, not by stage {self.stage!r}"
                )

    @property
    def effective_lora_alpha(self) -> int:
        """lora_alpha, defaulting to twice the rank."""
        return self.lora_alpha or 2 * self.lora_rank

    @property
    def world_size(self) -> int:
        """Training processes over all hosts."""
        return self.nproc_per_node * self.nnodes


def field_stages(name: str) -> tuple[str, ...] | None:
    """The stages that use a RunConfig field (None: every stage)."""
    extra = RunConfig.model_fields[name].json_schema_extra
    stages = extra.get("stages") if isinstance(extra, dict) else None
    return tuple(stages) if stages is not None else None  # type: ignore[arg-type]


def stage_fields(stage: str) -> list[str]:
    """The RunConfig fields the stage uses, in schema order."""
    return [name for name in RunConfig.model_fields if (stages := field_stages(name)) is None or stage in stages]


def field_choices(name: str) -> list[str] | None:
    """The allowed values of a RunConfig Literal field (or list of Literals), else None."""
    return choices_of(RunConfig, name)


def validate_config(data: dict[str, Any], source: str = "config") -> RunConfig:
    """Build a RunConfig from a mapping, raising ConfigError with one readable line per problem."""
    return validate_schema(RunConfig, data, source, "run config")


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """Parse CLI ``key=value`` overrides (values are YAML scalars or lists)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {pair!r}: expected key=value")
        try:
            out[key.strip()] = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError:
            out[key.strip()] = value
    return out


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Load a YAML run config, tunelab's or LLaMA-Factory's (or start from defaults), and apply overrides."""
    from tunelab.core.lf_import import load_any_config

    return load_any_config(path, overrides)[0]


def dump_config(config: RunConfig) -> str:
    """The fully resolved config as YAML (every field the stage uses, defaults included), re-loadable by
    load_config."""
    data = config.model_dump(mode="json", include=set(stage_fields(config.stage)))
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
