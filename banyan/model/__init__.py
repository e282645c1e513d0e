"""banyan.model: Llama and GPT-2 causal language models in plain PyTorch, plus HF conversion.

`build_model(cfg)` is the one constructor the trainer, sampler and planner use; every model it
returns is a `CausalLM` (see common.py for the shared interface).
"""

from __future__ import annotations

from banyan.config import ModelConfig
from banyan.errors import ConfigError
import torch

from banyan.model.common import CausalLM, KVCache, causal_attention, sample_logits, to_empty
from banyan.model.gpt2 import GPT2
from banyan.model.hf import config_from_hf, config_to_hf, from_hf, to_hf
from banyan.model.llama import Llama

ARCHS = {"llama": Llama, "gpt2": GPT2}


def build_model(cfg: ModelConfig, device: torch.device | str = "cpu") -> CausalLM:
    """Finalize `cfg` (derived sizes) and build the model it describes.

    The modules are created on the meta device (no memory, no default init), then, unless `device` is
    "meta", given storage on `device` and initialised once by `init_weights()` (deterministic under
    torch.manual_seed). The trainer builds on "meta" and initialises after sharding (banyan.parallel).
    """
    cfg.finalize()
    if cfg.vocab_size <= 0:
        raise ConfigError(f"model.vocab_size must be > 0, got {cfg.vocab_size} "
                          "(0 means 'take it from the prepared data'; set it before building the model)")
    if cfg.arch not in ARCHS:
        raise ConfigError(f"model.arch must be one of {sorted(ARCHS)}, got {cfg.arch!r}")
    with torch.device("meta"):
        model = ARCHS[cfg.arch](cfg)
    if torch.device(device).type != "meta":
        to_empty(model, torch.device(device))
        model.init_weights()
    return model


__all__ = ["ARCHS", "CausalLM", "GPT2", "KVCache", "Llama", "build_model", "causal_attention", "config_from_hf",
           "config_to_hf", "from_hf", "sample_logits", "to_hf"]
