"""banyan.plan: predict memory per GPU and step time of each training strategy before training.

`banyan plan --model llama-1b --gpus 4x4090 --interconnect pcie4 --p2p off` prints, for ddp and
ZeRO-1/2/3 x optimizer x activation checkpointing, the memory split per GPU, the largest
micro-batch that fits, compute/communication time per step, tokens/s and a recommendation.
`--validate` runs real steps here and compares. Byte model: memory.py; time model: speed.py.
"""

from banyan.plan.cli import main

__all__ = ["main"]
