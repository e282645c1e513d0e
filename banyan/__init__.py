"""banyan: from raw text to a trained, evaluated Llama-style model on your own hardware, plus an RL lab."""

__version__ = "0.1.0"
