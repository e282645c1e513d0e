"""Typed configuration: the sections every stage shares and `RunConfig`, their composition.

The dataclasses below *are* the CLI (dotted flags: `--model.n_layer 4`), the TOML recipe format
and the Python API; banyan.configlib turns them into each other. Precedence, lowest first:

    dataclass defaults  <  preset (banyan/configs/NAME.toml)  <  --config FILE.toml  <  CLI flags

`ModelConfig` lives next to the model (banyan.model.config); it and the machinery of
banyan.configlib (`parse_cli`, `load_config`, `write_config`, ...) are re-exported here, so
`from banyan.config import ModelConfig, parse_cli` keeps working. Derived values (head_dim,
n_kv_head, d_ff, grad accumulation) are computed in `ModelConfig.finalize()` and
`RunConfig.finalize()`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from banyan.configlib import (PRESET_DIR, apply_dict, git_commit, list_presets, load_config, parse_cli,
                              preset_path, read_saved_config, read_toml, to_dict, write_config)
from banyan.configlib import _check_value, _field_types, _pop_option, _suggest  # noqa: F401  (re-exported)
from banyan.errors import ConfigError
from banyan.model.config import ModelConfig

__all__ = ["PRESET_DIR", "CheckpointConfig", "ConfigError", "DataConfig", "LoRAConfig", "LogConfig", "ModelConfig", "OptimConfig",
           "ParallelConfig", "RunConfig", "TrainConfig", "apply_dict", "git_commit", "list_presets", "load_config",
           "parse_cli", "preset_path", "read_saved_config", "read_toml", "to_dict", "write_config"]


# ----------------------------------------------------------------------------- sections
@dataclass
class DataConfig:
    """Where training tokens come from."""

    path: str = "data/shakespeare"
    """A folder made by `banyan data prepare` (meta.json, tokenizer, train/val shards)."""


@dataclass
class OptimConfig:
    """Optimizer and learning-rate schedule."""

    name: Literal["adamw", "adamw8bit", "adamw8bit-torchao", "muon"] = "adamw"
    """Optimizer: fp32 AdamW, 8-bit AdamW (bitsandbytes or torchao), or Muon (+AdamW for non-matrix params)."""
    lr: float = 3e-3
    """Peak learning rate."""
    min_lr_ratio: float = 0.1
    """Final learning rate as a fraction of the peak."""
    weight_decay: float = 0.1
    """Decoupled weight decay, applied to 2-D weights only."""
    beta1: float = 0.9
    """AdamW beta1."""
    beta2: float = 0.95
    """AdamW beta2."""
    eps: float = 1e-8
    """AdamW epsilon."""
    schedule: Literal["cosine", "wsd", "constant"] = "cosine"
    """Learning-rate schedule after warm-up: cosine decay, warmup-stable-decay, or constant."""
    warmup_steps: int = 20
    """Linear warm-up steps."""
    decay_frac: float = 0.2
    """WSD: fraction of the run spent in the final (linear) decay."""
    muon_lr: float = 0.02
    """Muon: learning rate of the 2-D hidden weights."""
    muon_momentum: float = 0.95
    """Muon: momentum."""


@dataclass
class TrainConfig:
    """The training loop."""

    max_steps: int = 200
    """Optimizer steps to run."""
    seq_len: int = 256
    """Tokens per sequence (context length) during training."""
    micro_batch: int = 16
    """Sequences per forward/backward on one device."""
    global_batch_tokens: int = 0
    """Tokens per optimizer step across all devices; 0 means micro_batch*seq_len*world_size (no accumulation)."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value (0 disables)."""
    dtype: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """Compute dtype for autocast: auto = bf16 where it pays (CUDA; CPUs with AMX), else fp32 (banyan.hardware.native_bf16)."""
    device: str = "auto"
    """Device: auto, cpu, cuda, cuda:1, ..."""
    compile: bool = False
    """Wrap the model in torch.compile."""
    activation_checkpointing: Literal["none", "full", "selective"] = "none"
    """Recompute activations in backward: per block (full) or every other block (selective)."""
    seed: int = 1337
    """Seed for init, data order and sampling."""
    eval_every: int = 50
    """Run validation every this many steps (0 disables; the last step is always evaluated)."""
    eval_batches: int = 8
    """Micro-batches per validation (0: the whole validation split, every window of it: slow on a large one)."""
    sample_every: int = 0
    """Print a sample from `sample_prompt` every this many steps (0: never)."""
    sample_prompt: str = ""
    """Prompt for periodic samples; empty takes the opening tokens of the held-out data."""
    sample_tokens: int = 200
    """Tokens per periodic sample."""
    log_every: int = 10
    """Write metrics every this many steps."""
    max_bad_steps: int = 5
    """Stop with an error after this many non-finite losses in a row (each one skips its update)."""
    chunked_loss: int = 0
    """Compute cross-entropy over this many positions at a time (0: all at once)."""


@dataclass
class LogConfig:
    """Logging sinks."""

    tensorboard: bool = True
    """Write TensorBoard event files under OUT/tb."""
    wandb: bool = False
    """Log to Weights & Biases (offline mode unless WANDB_API_KEY is set)."""
    wandb_project: str = "banyan"
    """W&B project name."""
    wandb_run_name: str = ""
    """W&B run name; empty uses the output folder's name."""
    plots: bool = True
    """Write PNG plots (loss, lr, throughput) at the end."""
    progress: bool = True
    """Show a progress bar."""


@dataclass
class CheckpointConfig:
    """Checkpoints."""

    every: int = 100
    """Write a checkpoint every this many steps (0: only at the end)."""
    keep_last: int = 2
    """Keep this many most recent checkpoints."""


@dataclass
class ParallelConfig:
    """Multi-device execution."""

    strategy: Literal["auto", "single", "ddp", "zero1", "zero2", "zero3", "hsdp"] = "auto"
    """How to spread training over processes (auto picks and says why)."""
    nproc: int = 0
    """Launch this many local processes through torchrun (0: run in this process)."""
    mixed_precision: bool = False
    """FSDP: bf16 parameters with fp32 gradient reduction."""
    reduce_dtype: Literal["fp32", "bf16"] = "fp32"
    """FSDP with mixed_precision: dtype of the gradient reduce-scatter/all-reduce."""
    cpu_offload: bool = False
    """FSDP: keep parameters and optimizer state in CPU memory."""
    bucket_mb: int = 25
    """DDP: gradient bucket size in MB."""
    grad_as_bucket_view: bool = True
    """DDP: gradients as views into the communication buckets (saves memory)."""
    replicate_degree: int = 0
    """HSDP: number of replica groups (0: number of nodes)."""


@dataclass
class LoRAConfig:
    """Low-rank adapters (Hu et al. 2021) on frozen weights, for any stage; rank 0 trains every weight."""

    rank: int = 0
    """Adapter rank r (0: LoRA off, full fine-tuning)."""
    alpha: float = 16.0
    """Scale numerator: the adapter update is multiplied by alpha / rank."""
    dropout: float = 0.0
    """Dropout on the adapters' input (the base path is not dropped)."""
    targets: str = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
    """Comma-separated linear layers to adapt, matched by module-name suffix (GPT-2: c_attn,c_proj,c_fc)."""

    def check(self) -> None:
        """A ConfigError for a negative rank, a bad dropout or an unknown target name."""
        from banyan.model.lora import check_targets

        if self.rank < 0:
            raise ConfigError(f"lora.rank must be >= 0 (0 turns LoRA off), got {self.rank}")
        if self.rank:
            if not 0.0 <= self.dropout < 1.0:
                raise ConfigError(f"lora.dropout must be in [0, 1), got {self.dropout}")
            check_targets(self.targets)


@dataclass
class RunConfig:
    """A complete training run: `banyan pretrain` takes this."""

    takes_presets: ClassVar[bool] = True  # parse_cli: --preset NAME applies banyan/configs/NAME.toml
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    log: LogConfig = field(default_factory=LogConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    out: str = "runs/shakespeare"
    """Output folder for config.toml, metrics, plots and checkpoints."""
    resume: bool = False
    """Continue from the latest complete checkpoint in `out`."""
    init: str = ""
    """Start from these weights (not a resume: fresh optimizer and step 0): a run folder (its latest
    checkpoint) or a checkpoint folder; the architecture comes from it. Empty: random init."""

    # allowed values of numeric fields, checked when flags are parsed (banyan.configlib.check_ranges)
    # and in finalize(); (lo, hi), None = unbounded; floats must also be finite
    ranges = {
        "model.vocab_size": (0, None), "model.n_layer": (1, None), "model.n_head": (1, None),
        "model.n_kv_head": (0, None), "model.d_model": (1, None), "model.d_ff": (0, None),
        "model.multiple_of": (1, None), "model.max_seq_len": (1, None), "model.rope_theta": (1e-9, None),
        "model.norm_eps": (0.0, 1.0), "model.dropout": (0.0, 0.99), "model.init_std": (1e-12, None),
        "train.max_steps": (1, None), "train.seq_len": (1, None), "train.micro_batch": (1, None),
        "train.global_batch_tokens": (0, None), "train.grad_clip": (0.0, None), "train.eval_every": (0, None),
        "train.eval_batches": (0, None), "train.sample_every": (0, None), "train.sample_tokens": (0, None),
        "train.log_every": (1, None), "train.max_bad_steps": (1, None), "train.chunked_loss": (0, None),
        "optim.lr": (0.0, None), "optim.min_lr_ratio": (0.0, 1.0), "optim.weight_decay": (0.0, None),
        "optim.beta1": (0.0, 0.999999), "optim.beta2": (0.0, 0.999999), "optim.eps": (0.0, None),
        "optim.warmup_steps": (0, None), "optim.decay_frac": (0.0, 1.0), "optim.muon_lr": (0.0, None),
        "optim.muon_momentum": (0.0, 0.999999), "checkpoint.every": (0, None), "checkpoint.keep_last": (1, None),
        "parallel.nproc": (0, None), "parallel.bucket_mb": (1, None), "parallel.replicate_degree": (0, None),
    }

    def grad_accum(self, world_size: int = 1) -> int:
        """Micro-steps per optimizer step; raises if the global batch does not divide."""
        per_micro = self.train.micro_batch * self.train.seq_len * world_size
        if self.train.global_batch_tokens == 0:
            return 1
        if self.train.global_batch_tokens % per_micro:
            raise ConfigError(
                f"train.global_batch_tokens ({self.train.global_batch_tokens}) must be a multiple of "
                f"micro_batch*seq_len*world_size = {self.train.micro_batch}*{self.train.seq_len}*{world_size} = {per_micro}"
            )
        return self.train.global_batch_tokens // per_micro

    def finalize(self) -> "RunConfig":
        from banyan.configlib import check_ranges

        check_ranges(self, self.ranges)
        self.model.finalize()
        if self.train.seq_len > self.model.max_seq_len:
            raise ConfigError(f"train.seq_len ({self.train.seq_len}) exceeds model.max_seq_len ({self.model.max_seq_len})")
        self.grad_accum(1)
        self.lora.check()
        return self
