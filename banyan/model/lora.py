"""LoRA: low-rank adapters on frozen linear layers (Hu et al. 2021, "LoRA: Low-Rank Adaptation of LLMs").

    y = x W^T + b + (alpha / r) * dropout(x) A^T B^T        W [out, in] frozen, A [r, in], B [out, r]

A starts kaiming-uniform (a=sqrt(5), as nn.Linear and peft's `reset_lora_parameters`: U(-1/sqrt(in),
1/sqrt(in))) and B at zero, so a freshly adapted model computes exactly what the base does. Only A and
B train. `LoRALinear` subclasses nn.Linear and keeps the base parameters as `weight` / `bias`, the
adapters beside them as `lora_A` / `lora_B`: names stay HF-like (`...q_proj.weight`, `...q_proj.lora_A`),
so checkpoints, FSDP FQNs and the init plan see plain names. `merge_lora` folds B A * alpha/r into W and
turns every LoRALinear back into an nn.Linear: the exact HF parameter set again (for export).

Pure PyTorch: nothing here imports banyan.train.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from banyan.errors import ConfigError

ADAPTER_SUFFIXES = (".lora_A", ".lora_B")
# the projections of the two architectures, matched by module-name suffix
LLAMA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
GPT2_TARGETS = ("c_attn", "c_proj", "c_fc")
VALID_TARGETS = LLAMA_TARGETS + GPT2_TARGETS


class LoRALinear(nn.Linear):
    """An nn.Linear whose (frozen) `weight`/`bias` are adapted by a trainable rank-r product B A."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        dev = base.weight.device
        super().__init__(base.in_features, base.out_features, bias=base.bias is not None, device="meta")
        self.weight, self.bias = base.weight, base.bias  # the same Parameter objects: nothing copied
        self.rank, self.alpha = rank, alpha
        self.scale = alpha / rank
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, device=dev, dtype=base.weight.dtype))
        self.lora_B = nn.Parameter(torch.empty(base.out_features, rank, device=dev, dtype=base.weight.dtype))
        if dev.type != "meta":
            self.reset_lora_parameters()

    def lora_bound(self) -> float:
        """U(-b, b) bound of A: kaiming_uniform_(a=sqrt(5)) gives gain sqrt(1/3), b = gain*sqrt(3/in) = 1/sqrt(in)."""
        return 1.0 / math.sqrt(self.in_features)

    @torch.no_grad()
    def reset_lora_parameters(self) -> None:
        nn.init.uniform_(self.lora_A, -self.lora_bound(), self.lora_bound())
        nn.init.zeros_(self.lora_B)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = F.linear(x, self.weight, self.bias)
        # [.., in] -> [.., r] -> [.., out]; two thin matmuls, never the [out, in] product
        return base + F.linear(F.linear(self.lora_dropout(x), self.lora_A), self.lora_B) * self.scale

    @torch.no_grad()
    def merged_weight(self) -> torch.Tensor:
        """W + (B @ A) * alpha/r in fp32, cast back to W's dtype: [out, in]."""
        delta = (self.lora_B.float() @ self.lora_A.float()) * self.scale
        return (self.weight.float() + delta).to(self.weight.dtype)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, alpha={self.alpha}"


def is_adapter_name(name: str) -> bool:
    """True for an adapter parameter's name (`...q_proj.lora_A`)."""
    return name.endswith(ADAPTER_SUFFIXES)


def has_lora(model: nn.Module) -> bool:
    return any(isinstance(m, LoRALinear) for m in model.modules())


def check_targets(targets) -> tuple[str, ...]:
    """Target names as a tuple; an unknown one is a ConfigError listing the valid names."""
    names = tuple(t.strip() for t in (targets.split(",") if isinstance(targets, str) else targets) if t.strip())
    if not names:
        raise ConfigError(f"lora.targets is empty; valid names: {', '.join(VALID_TARGETS)}")
    for t in names:
        if t not in VALID_TARGETS:
            raise ConfigError(f"lora.targets: unknown module name {t!r}; valid names: {', '.join(VALID_TARGETS)}")
    return names


def apply_lora(model: nn.Module, rank: int, alpha: float, dropout: float = 0.0,
               targets=LLAMA_TARGETS) -> list[str]:
    """Replace every nn.Linear whose name ends with a target by a LoRALinear, in place (meta or real);
    freeze every other parameter. Returns the adapted module names. Tied head/embedding stay untouched."""
    if rank <= 0:
        raise ConfigError(f"lora.rank must be > 0 to apply LoRA, got {rank}")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"lora.dropout must be in [0, 1), got {dropout}")
    names = check_targets(targets)
    chosen = [(n, m) for n, m in model.named_modules()
              if type(m) is nn.Linear and n.rsplit(".", 1)[-1] in names]
    if not chosen:
        raise ConfigError(f"lora.targets {','.join(names)} match no linear layer of this model "
                          f"({type(model).__name__}); valid names for it: {', '.join(_linear_names(model))}")
    for p in model.parameters():
        p.requires_grad_(False)
    for name, module in chosen:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LoRALinear(module, rank, alpha, dropout))
    return [n for n, _ in chosen]


def _linear_names(model: nn.Module) -> list[str]:
    return sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)}
                  & set(VALID_TARGETS))


def lora_init_plan(model: nn.Module) -> list[tuple[str, nn.Parameter, str, float]]:
    """(name, param, kind, value) for every adapter, in module order: A "uniform" (value = bound), B "zeros".
    CausalLM.init_plan appends these after the base parameters, so a LoRA run's base gets the draws a
    plain run with the same seed gets."""
    plan = []
    for name, m in model.named_modules():
        if isinstance(m, LoRALinear):
            plan.append((f"{name}.lora_A", m.lora_A, "uniform", m.lora_bound()))
            plan.append((f"{name}.lora_B", m.lora_B, "zeros", 0.0))
    return plan


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters only: {`...q_proj.lora_A`: A, `...q_proj.lora_B`: B} (detached, as stored)."""
    return {n: p.detach() for n, p in model.named_parameters() if is_adapter_name(n)}


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight and put a plain nn.Linear back (same weight Parameter,
    now W + B A * alpha/r): the model's parameters are the plain model's again. In place; returns model."""
    for name, m in list(model.named_modules()):
        if not isinstance(m, LoRALinear):
            continue
        m.weight.copy_(m.merged_weight())
        plain = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None, device="meta")
        plain.weight, plain.bias = m.weight, m.bias
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, plain)
    return model
