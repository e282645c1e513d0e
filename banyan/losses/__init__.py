"""banyan.losses: language-model losses (plain and chunked cross-entropy)."""

from banyan.losses.ce import cross_entropy, lm_loss

__all__ = ["cross_entropy", "lm_loss"]
