"""A Bradley-Terry reward model: a causal LM's body with a scalar head instead of the vocabulary head.

    RewardModel(lm)            lm is any CausalLM (banyan.model.build_model); its submodules are
                               registered under their own names, minus the LM head, plus
                               `score = nn.Linear(d_model, 1, bias=False)`, so the parameter names are
                               HF's (`model.layers.0...`, `score.weight`, as in
                               LlamaForSequenceClassification) and an LM checkpoint loads into it
                               with only `score.weight` missing
    forward(input_ids)         [B, T] -> per-position rewards [B, T] (fp32); a stage reads the one at
                               the last response token (through forward, so DDP/FSDP hooks run)

The head starts at zero (`init_score`): every reward is 0 at step 0, so the pairwise loss
-log sigmoid(r_chosen - r_rejected) starts at log 2 whatever the body. The LM's helpers
(`blocks`, `num_params`, `flops_per_token`, `config`, ...) are the wrapped model's.
"""

from __future__ import annotations

import torch
import torch.nn as nn


class RewardModel(nn.Module):
    """`lm`'s body + a scalar `score` head (see the module docstring)."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        head = lm.output_weight()
        for name, child in lm.named_children():
            if isinstance(child, nn.Linear) and child.weight is head:
                continue  # the vocabulary head is not part of a reward model (tied: the embedding keeps it)
            self.add_module(name, child)
        self.__dict__["lm"] = lm  # not a submodule: its children are registered above under their names
        self.score = nn.Linear(lm.config.d_model, 1, bias=False, device=head.device, dtype=head.dtype)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        hidden = self.lm.hidden_states(input_ids)  # [B, T, D] after the final norm
        return self.score(hidden).squeeze(-1).float()  # [B, T]

    @torch.no_grad()
    def init_score(self) -> None:
        self.score.weight.zero_()

    def init_plan(self):
        """The body's plan (without the LM head) and the zero head (banyan.parallel.materialize replays it)."""
        mine = {id(p) for p in self.parameters()}
        return [e for e in self.lm.init_plan() if id(e[1]) in mine] + [("score.weight", self.score.weight,
                                                                         "zeros", 0.0)]

    @torch.no_grad()
    def init_weights(self) -> None:
        self.lm.init_weights()
        self.init_score()

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if "lm" not in self.__dict__:  # still in __init__
                raise
            return getattr(self.__dict__["lm"], name)  # blocks(), config, num_params(), flops_per_token(), ...

