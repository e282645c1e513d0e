"""`banyan reward`: a Bradley-Terry reward model trained on preference pairs, as a Task.

    banyan reward --init SFT_RUN --reward.data PREFS --out DIR

The model is the --init LM's body with a scalar head (banyan.model.reward.RewardModel, built through
Task.build_model); the reward of a sequence is the head's output at its last response token (the
last position whose next-token label is trained). Per pair, loss = -log sigmoid(r_chosen - r_rejected)
(Bradley & Terry 1952; Ouyang et al. 2022, eq. 1), summed over pairs; metrics and held-out evaluation
are DPO's (banyan.train.dpo.PairTask): reward accuracy, chosen / rejected rewards, margin.
Checkpoints are ordinary runs (`score.weight` next to the body's weights); `load_reward_model(RUN)`
reads one back for scoring.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from banyan.config import RunConfig
from banyan.errors import CheckpointError
from banyan.train.dpo import PairDataSection, PairTask, pair_metrics, stage_main
from banyan.train.task import IGNORE, Batch
from banyan.train.trainer import Trainer


@dataclass
class RewardSection(PairDataSection):
    """Reward-model data (the fields of PairDataSection)."""


@dataclass
class RewardConfig(RunConfig):
    """A reward-model run: `banyan reward --init SFT_RUN --reward.data PREFS --out DIR`."""

    reward: RewardSection = field(default_factory=RewardSection)
    out: str = "runs/reward"
    """Output folder for config.toml, metrics, plots and checkpoints."""


def last_response_index(labels: torch.Tensor) -> torch.Tensor:
    """[R] position of the last trained label of each row of labels [R, T] (where the reward is read)."""
    pos = torch.arange(labels.size(1), device=labels.device).expand_as(labels)
    return torch.where(labels != IGNORE, pos, -1).max(dim=1).values


def sequence_rewards(model: nn.Module, batch: Batch) -> torch.Tensor:
    """[R] reward of each row: the per-position head output at its last response token."""
    per_pos = model(batch["input_ids"])  # [R, T]
    return per_pos.gather(1, last_response_index(batch["labels"])[:, None]).squeeze(1)


def load_lm_weights(ck: Path, par, env) -> None:
    """An LM checkpoint (single-process safetensors) into a RewardModel: the body's tensors; the head to zero."""
    from safetensors.torch import load_file

    from banyan.train.dist_checkpoint import is_sharded

    if is_sharded(ck):
        raise CheckpointError(f"--init {ck}: a sharded checkpoint; merge it first: banyan checkpoint consolidate {ck}")
    weights = load_file(str(ck / "model.safetensors"))
    raw = par.raw
    # a tied checkpoint stores the shared tensor once, possibly under the head's name
    for group in _name_groups(raw.lm).values():
        have = [n for n in group if n in weights]
        for n in group:
            if have and n not in weights:
                weights[n] = weights[have[0]]
    own = {n for n, _ in raw.named_parameters(remove_duplicate=False)}
    missing = sorted(own - set(weights) - {"score.weight"})
    if missing:
        raise CheckpointError(f"--init {ck}: checkpoint lacks {missing[:5]} for the reward model's body")
    weights = {k: v for k, v in weights.items() if k in own}
    if env.distributed:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(raw, weights, options=StateDictOptions(full_state_dict=True, strict=False))
    else:
        raw.load_state_dict(weights, strict=False)
    raw.init_score()


def _name_groups(module: nn.Module) -> dict[int, list[str]]:
    groups: dict[int, list[str]] = {}
    for n, p in module.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(n)
    return groups


class RewardTask(PairTask):
    """Bradley-Terry pairwise loss on a RewardModel."""

    name = "reward"
    section_name = "reward"

    def build_model(self, cfg) -> nn.Module:
        from banyan.model import build_model
        from banyan.model.reward import RewardModel

        return RewardModel(build_model(cfg.model, device="meta"))

    def load_init(self, ck: Path, par, cfg, env) -> None:
        load_lm_weights(ck, par, env)

    def pair_loss(self, model: nn.Module, batch: Batch, split: str):
        rc, rr = sequence_rewards(model, batch).chunk(2)
        losses = -F.logsigmoid(rc - rr)
        return losses.sum(), torch.tensor(rc.numel()), pair_metrics(rc.detach(), rr.detach())


def load_reward_model(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """A trained reward model from a `banyan reward` run or checkpoint folder, in eval mode."""
    from banyan.config import read_saved_config
    from banyan.model import build_model
    from banyan.model.reward import RewardModel
    from banyan.train import checkpoint as ckpt
    from banyan.train.init_from import init_checkpoint

    ck = init_checkpoint(str(path))
    cfg = read_saved_config(RewardConfig, ck / "config.toml")
    model = RewardModel(build_model(cfg.model.finalize(), device="cpu"))
    ckpt.load_checkpoint(ck, model, None, None, restore_rng=False)
    return model.to(device).eval()


def train(cfg: RewardConfig) -> dict:
    """Run (or resume) a reward-model job; returns the final summary dict."""
    return Trainer(cfg, RewardTask(cfg), stage="reward").run()


def main(argv: list[str]) -> int:
    return stage_main(RewardConfig, "reward", train, argv)
