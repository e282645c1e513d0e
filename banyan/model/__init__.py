"""banyan.model: Llama and GPT-2 causal language models in plain PyTorch, plus HF conversion.

`build_model(cfg)` is the one constructor the trainer, sampler and planner use; every model it
returns is a `CausalLM` (see common.py for the shared interface). The architecture is
`ModelConfig` (banyan.model.config).

The model classes are imported on first use (PEP 562 `__getattr__`), so `banyan.model.config`,
which banyan.config re-exports to every verb, can be imported without loading torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from banyan.errors import ConfigError
from banyan.model.config import ModelConfig

if TYPE_CHECKING:
    from banyan.model.common import CausalLM, KVCache, causal_attention, sample_logits
    from banyan.model.gpt2 import GPT2
    from banyan.model.hf import config_from_hf, config_to_hf, from_hf, to_hf
    from banyan.model.llama import Llama

# public name -> submodule that defines it
_HOME = {"CausalLM": "common", "KVCache": "common", "causal_attention": "common", "sample_logits": "common",
         "GPT2": "gpt2", "Llama": "llama", "config_from_hf": "hf", "config_to_hf": "hf", "from_hf": "hf",
         "to_hf": "hf"}


def __getattr__(name: str) -> Any:
    if name == "ARCHS":
        value: Any = {"llama": __getattr__("Llama"), "gpt2": __getattr__("GPT2")}
    elif name in _HOME:
        value = getattr(importlib.import_module(f"banyan.model.{_HOME[name]}"), name)
    else:
        raise AttributeError(f"module 'banyan.model' has no attribute {name!r}")
    globals()[name] = value
    return value


def build_model(cfg: ModelConfig, device: "torch.device | str" = "cpu") -> CausalLM:
    """Finalize `cfg` (derived sizes) and build the model it describes.

    The modules are created on the meta device (no memory, no default init), then, unless `device` is
    "meta", given storage on `device` and initialised once by `init_weights()` (deterministic under
    torch.manual_seed). The trainer builds on "meta" and initialises after sharding (banyan.parallel).
    """
    import torch

    from banyan.model.common import to_empty

    archs = globals().get("ARCHS") or __getattr__("ARCHS")
    cfg.finalize()
    if cfg.vocab_size <= 0:
        raise ConfigError(f"model.vocab_size must be > 0, got {cfg.vocab_size} "
                          "(0 means 'take it from the prepared data'; set it before building the model)")
    if cfg.arch not in archs:
        raise ConfigError(f"model.arch must be one of {sorted(archs)}, got {cfg.arch!r}")
    with torch.device("meta"):
        model = archs[cfg.arch](cfg)
    if torch.device(device).type != "meta":
        to_empty(model, torch.device(device))
        model.init_weights()
    return model


__all__ = ["ARCHS", "CausalLM", "GPT2", "KVCache", "Llama", "ModelConfig", "build_model", "causal_attention",
           "config_from_hf", "config_to_hf", "from_hf", "sample_logits", "to_hf"]
