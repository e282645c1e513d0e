"""banyan: from raw text to a trained, evaluated Llama-style model on your own hardware, plus an RL lab."""

import logging as _logging

__version__ = "0.1.0"


class _ImportNoise(_logging.Filter):
    """Drops two warnings that importing torchao prints on every run (transformers and the 8-bit
    optimizers import it): its CUDA-only kernels (_C_*.so) failing to load on a CPU-only torch, and
    torch's deprecation note on its Enum registration. Nothing banyan uses needs either; every other
    message of those loggers still shows."""

    def filter(self, record: _logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not ((msg.startswith("Failed to load ") and "/torchao/_C" in msg)
                    or "is an Enum subclass and is now natively supported by torch.compile" in msg)


for _name in ("torchao", "torch.utils._pytree"):
    _logging.getLogger(_name).addFilter(_ImportNoise())
