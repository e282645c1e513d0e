"""Reward functions the GRPO tests load by name (`grpo_rewards:NAME`)."""

import math


def starts_lower(prompt, completion):
    """1 when the completion starts with a lowercase letter: trivially learnable from the first token."""
    return float(completion[:1].islower())


def boom(prompt, completion):
    raise RuntimeError("scorer crashed")


def not_finite(prompt, completion):
    return math.inf


def constant(prompt, completion):
    """The same non-round reward for every completion: every group equal, no learning signal."""
    return 0.1
