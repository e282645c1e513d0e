"""banyan.plan: predict memory per GPU and step time of each training strategy before training.

`banyan plan --model llama-1b --gpus 4x4090 --interconnect pcie4 --p2p off` prints, for ddp and
ZeRO-1/2/3 x optimizer x activation checkpointing, the memory split per GPU, the largest
micro-batch that fits, compute/communication time per step, tokens/s and a recommendation.
`--validate` runs real steps here and compares. Byte model: memory.py (a leaf: it imports only
banyan.model.config, so `parallel.strategy auto` shares it without importing the planner or the
CLI); time model: speed.py; the verb: cli.py.
"""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    """`banyan plan` (banyan.plan.cli.main), imported only when the verb runs."""
    from banyan.plan.cli import main as plan_main

    return plan_main(argv)


__all__ = ["main"]
