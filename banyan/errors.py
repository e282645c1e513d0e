"""Every user-facing error banyan raises: one base class at the bottom of the import graph.

The CLI turns any `BanyanError` into one line on stderr and exit code 2. Subclasses say which
layer found the problem; each message names the thing (file, line, key, expected vs got).
This module imports nothing from banyan, so every layer (model, data, losses, ...) may use it.
"""

from __future__ import annotations


class BanyanError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


class ConfigError(BanyanError, ValueError):
    """A configuration problem (flag, TOML key or value, incompatible combination)."""


class DataError(BanyanError, ValueError):
    """Bad data input (file, line, field, spec)."""


class ShardError(DataError):
    """A token shard that is missing, truncated, corrupted or made for another tokenizer."""


class CheckpointError(ConfigError):
    """A missing, incomplete or incompatible checkpoint."""


class IntegrityError(BanyanError):
    """A folder whose files do not match its manifest.json (missing, truncated, altered)."""


class TrainingDiverged(BanyanError):
    """Too many non-finite losses in a row."""


__all__ = ["BanyanError", "CheckpointError", "ConfigError", "DataError", "IntegrityError", "ShardError", "TrainingDiverged"]
