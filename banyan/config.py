"""Typed configuration: dataclass sections, TOML recipes, dotted CLI overrides.

One mechanism serves every verb. The dataclasses below *are* the CLI (via tyro), the TOML
recipe format (via tomllib) and the Python API. Precedence, lowest first:

    dataclass defaults  <  preset (banyan/configs/NAME.toml)  <  --config FILE.toml  <  CLI flags

Unknown keys and wrong types in TOML are errors that name the key, the file and the closest
valid key. Derived values (head_dim, n_kv_head, d_ff, grad accumulation) are computed in one
place: `ModelConfig.finalize()` and `RunConfig.finalize()`.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import subprocess
import sys
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from banyan.errors import ConfigError

PRESET_DIR = Path(__file__).parent / "configs"
T = TypeVar("T")


# ----------------------------------------------------------------------------- sections
@dataclass
class ModelConfig:
    """Architecture of the transformer (Llama or GPT-2 family)."""

    arch: Literal["llama", "gpt2"] = "llama"
    """Model family: `llama` (RMSNorm, RoPE, SwiGLU, GQA, no biases) or `gpt2`."""
    vocab_size: int = 0
    """Vocabulary size; 0 takes it from the prepared data's tokenizer."""
    n_layer: int = 4
    """Number of transformer blocks."""
    n_head: int = 4
    """Number of query heads."""
    n_kv_head: int = 0
    """Number of key/value heads (grouped-query attention); 0 means n_head."""
    d_model: int = 256
    """Residual stream width."""
    d_ff: int = 0
    """MLP hidden width; 0 derives it (llama: 8/3*d_model rounded up to multiple_of; gpt2: 4*d_model)."""
    multiple_of: int = 64
    """Llama MLP width is rounded up to a multiple of this."""
    max_seq_len: int = 256
    """Longest context the model supports (learned positions for gpt2, RoPE cache for llama)."""
    rope_theta: float = 10000.0
    """RoPE base frequency."""
    rope_scaling: Literal["none", "llama3"] = "none"
    """Frequency scaling of RoPE; `llama3` applies Llama-3.1 style long-context scaling."""
    rope_factor: float = 8.0
    """llama3 scaling: overall factor."""
    rope_low_freq_factor: float = 1.0
    """llama3 scaling: low-frequency factor."""
    rope_high_freq_factor: float = 4.0
    """llama3 scaling: high-frequency factor."""
    rope_original_max_seq_len: int = 8192
    """llama3 scaling: the context length the base model was trained with."""
    norm_eps: float = 1e-5
    """Epsilon of RMSNorm / LayerNorm."""
    tie_embeddings: bool = True
    """Share the token embedding and the output head (always true for gpt2)."""
    dropout: float = 0.0
    """Dropout probability (attention and residual)."""
    init_std: float = 0.02
    """Std of the normal init; output projections are scaled by 1/sqrt(2*n_layer)."""

    def finalize(self) -> "ModelConfig":
        """Fill derived values and check consistency; returns self."""
        if self.n_kv_head == 0:
            self.n_kv_head = self.n_head
        if self.d_model % self.n_head:
            raise ConfigError(f"model.d_model ({self.d_model}) must divide by model.n_head ({self.n_head})")
        if self.n_head % self.n_kv_head:
            raise ConfigError(f"model.n_head ({self.n_head}) must divide by model.n_kv_head ({self.n_kv_head})")
        if self.d_ff == 0:
            if self.arch == "gpt2":
                self.d_ff = 4 * self.d_model
            else:
                hidden = int(2 * (4 * self.d_model) / 3)
                self.d_ff = self.multiple_of * math.ceil(hidden / self.multiple_of)
        if self.arch == "gpt2":
            self.tie_embeddings = True
        return self

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head


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
    """Compute dtype for autocast: auto = bf16 on CUDA, fp32 on CPU."""
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
    """Micro-batches per validation."""
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
class RunConfig:
    """A complete training run: `banyan pretrain` takes this."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    log: LogConfig = field(default_factory=LogConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    out: str = "runs/shakespeare"
    """Output folder for config.toml, metrics, plots and checkpoints."""
    resume: bool = False
    """Continue from the latest complete checkpoint in `out`."""

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
        self.model.finalize()
        if self.train.seq_len > self.model.max_seq_len:
            raise ConfigError(f"train.seq_len ({self.train.seq_len}) exceeds model.max_seq_len ({self.model.max_seq_len})")
        self.grad_accum(1)
        return self


# ----------------------------------------------------------------------------- TOML <-> dataclass
def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _check_value(key: str, value: Any, tp: Any, where: str) -> Any:
    """Validate one TOML value against a field annotation; returns the (possibly coerced) value."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{where}: key '{key}' expects one of {list(allowed)}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _check_value(key, value, arg, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: key '{key}' expects {tp}, got {type(value).__name__} {value!r}")
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"{where}: key '{key}' expects None")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: key '{key}' expects bool, got {type(value).__name__} {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: key '{key}' expects int, got {type(value).__name__} {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: key '{key}' expects float, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: key '{key}' expects str, got {type(value).__name__} {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise ConfigError(f"{where}: key '{key}' expects a list, got {type(value).__name__}")
        (arg, *_) = typing.get_args(tp) or (Any,)
        return [v if arg is Any else _check_value(key, v, arg, where) for v in value]
    return value


def _suggest(name: str, options: list[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(name, options, n=1, cutoff=0.5)
    return f"; did you mean '{prefix}{close[0]}'?" if close else f"; valid keys: {', '.join(sorted(options))}"


def apply_dict(obj: T, data: dict, where: str, prefix: str = "") -> T:
    """Return a copy of dataclass `obj` with values from a nested dict applied, validating keys and types."""
    types_ = _field_types(type(obj))
    updates = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in types_:
            raise ConfigError(f"{where}: unknown key '{dotted}'" + _suggest(key, list(types_), prefix))
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: key '{dotted}' is a section [{dotted}], got {type(value).__name__}")
            updates[key] = apply_dict(current, value, where, prefix=dotted + ".")
        else:
            updates[key] = _check_value(dotted, value, types_[key], where)
    return dataclasses.replace(obj, **updates)


def to_dict(obj: Any) -> dict:
    """Dataclass -> plain nested dict (TOML-safe)."""
    return dataclasses.asdict(obj)


def read_toml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None


def preset_path(name: str) -> Path:
    """Resolve a preset name (e.g. `llama-125m`) or a path to a TOML file."""
    p = Path(name)
    if p.suffix == ".toml" or p.is_file():
        return p
    candidate = PRESET_DIR / f"{name}.toml"
    if candidate.is_file():
        return candidate
    names = list_presets()
    raise ConfigError(f"unknown preset '{name}'" + _suggest(name, names).replace("keys", "presets"))


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def load_config(cls: type[T], preset: str | None = None, file: str | None = None,
                overrides: dict | None = None) -> T:
    """Build `cls` from defaults < preset < file < overrides (a nested dict), validating every key."""
    obj = cls()
    if preset:
        p = preset_path(preset)
        obj = apply_dict(obj, read_toml(p), str(p))
    if file:
        obj = apply_dict(obj, read_toml(file), str(file))
    if overrides:
        obj = apply_dict(obj, overrides, "overrides")
    return obj


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def write_config(obj: Any, path: str | Path, extra: dict | None = None) -> Path:
    """Write the resolved config (plus git commit) as TOML, atomically."""
    import tomli_w

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    from banyan.io import atomic_write_text

    data = {"git_commit": git_commit(), **(extra or {}), **to_dict(obj)}
    return atomic_write_text(path, tomli_w.dumps(data))


def read_saved_config(cls: type[T], path: str | Path) -> T:
    """Load a config written by `write_config` (ignores the bookkeeping keys)."""
    data = read_toml(path)
    names = {f.name for f in dataclasses.fields(cls)}
    return apply_dict(cls(), {k: v for k, v in data.items() if k in names}, str(path))


# ----------------------------------------------------------------------------- CLI
def _pop_option(argv: list[str], name: str) -> tuple[str | None, list[str]]:
    """Remove `--name VALUE` / `--name=VALUE` from argv; returns (value, rest)."""
    rest, value, i = [], None, 0
    while i < len(argv):
        a = argv[i]
        if a == name:
            if i + 1 >= len(argv):
                raise ConfigError(f"{name} needs a value")
            value = argv[i + 1]
            i += 2
            continue
        if a.startswith(name + "="):
            value = a.split("=", 1)[1]
        else:
            rest.append(a)
        i += 1
    return value, rest


def parse_cli(cls: type[T], argv: list[str] | None = None, prog: str = "banyan",
              description: str | None = None, default_preset: str | None = None) -> T:
    """Parse `--preset NAME`, `--config FILE.toml` and dotted flags (`--model.n_layer 4`) into `cls`.

    The preset and file are applied first; tyro then parses the remaining flags with that object
    as its default, so CLI > file > preset > defaults.
    """
    import tyro

    argv = list(sys.argv[1:] if argv is None else argv)
    wants_help = "-h" in argv or "--help" in argv
    preset, argv = _pop_option(argv, "--preset")
    file, argv = _pop_option(argv, "--config")
    takes_presets = isinstance(cls, type) and issubclass(cls, RunConfig)
    if preset and not takes_presets:
        raise ConfigError(f"--preset applies to training runs (pretrain, bench train); {prog} takes --config FILE.toml")
    default = load_config(cls, preset or default_preset, file)
    desc = description or (cls.__doc__ or "")
    if wants_help and not takes_presets:
        desc += "\n\nAlso: --config FILE.toml (flags override it)."
    elif wants_help:
        desc += ("\n\nAlso: --preset NAME (one of: " + ", ".join(list_presets()) +
                 ") and --config FILE.toml; precedence CLI > --config > --preset > defaults.")
    return tyro.cli(cls, args=argv, default=default, prog=prog, description=desc, use_underscores=True)
