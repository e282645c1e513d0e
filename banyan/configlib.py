"""The TOML <-> dataclass machinery behind every verb's configuration, and `parse_cli`.

Any dataclass is a config: its fields (with a docstring each) are the CLI flags (via tyro, dotted
for nested sections: `--model.n_layer 4`), the keys of a TOML file (via tomllib) and the Python
API. Precedence, lowest first:

    dataclass defaults  <  preset (banyan/configs/NAME.toml)  <  --config FILE.toml  <  CLI flags

Unknown keys and wrong types in TOML are errors that name the key, the file and the closest
valid key. A config class says what `parse_cli` does with two reserved flags through class
attributes, so this module knows no particular config:

    takes_presets = True       --preset NAME applies banyan/configs/NAME.toml (training runs)
    takes_config_file = False  --config is left to the class's own `config` field
"""

from __future__ import annotations

import dataclasses
import math
import difflib
import os
import subprocess
import sys
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

from banyan.errors import ConfigError

PRESET_DIR = Path(__file__).parent / "configs"
T = TypeVar("T")


# ----------------------------------------------------------------------------- TOML <-> dataclass
def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _check_value(key: str, value: Any, tp: Any, where: str) -> Any:
    """Validate one TOML value against a field annotation; returns the (possibly coerced) value."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{where}: key '{key}' expects one of {list(allowed)}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _check_value(key, value, arg, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: key '{key}' expects {tp}, got {type(value).__name__} {value!r}")
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"{where}: key '{key}' expects None")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: key '{key}' expects bool, got {type(value).__name__} {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: key '{key}' expects int, got {type(value).__name__} {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: key '{key}' expects float, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: key '{key}' expects str, got {type(value).__name__} {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise ConfigError(f"{where}: key '{key}' expects a list, got {type(value).__name__}")
        (arg, *_) = typing.get_args(tp) or (Any,)
        return [v if arg is Any else _check_value(key, v, arg, where) for v in value]
    return value


def _suggest(name: str, options: list[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(name, options, n=1, cutoff=0.5)
    return f"; did you mean '{prefix}{close[0]}'?" if close else f"; valid keys: {', '.join(sorted(options))}"


def apply_dict(obj: T, data: dict, where: str, prefix: str = "") -> T:
    """Return a copy of dataclass `obj` with values from a nested dict applied, validating keys and types."""
    types_ = _field_types(type(obj))
    updates = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in types_:
            raise ConfigError(f"{where}: unknown key '{dotted}'" + _suggest(key, list(types_), prefix))
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: key '{dotted}' is a section [{dotted}], got {type(value).__name__}")
            updates[key] = apply_dict(current, value, where, prefix=dotted + ".")
        else:
            updates[key] = _check_value(dotted, value, types_[key], where)
    return dataclasses.replace(obj, **updates)


def to_dict(obj: Any) -> dict:
    """Dataclass -> plain nested dict (TOML-safe)."""
    return dataclasses.asdict(obj)


def read_toml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None


def preset_path(name: str) -> Path:
    """Resolve a preset name (e.g. `llama-125m`) or a path to a TOML file."""
    p = Path(name)
    if p.suffix == ".toml" or p.is_file():
        return p
    candidate = PRESET_DIR / f"{name}.toml"
    if candidate.is_file():
        return candidate
    names = list_presets()
    raise ConfigError(f"unknown preset '{name}'" + _suggest(name, names).replace("keys", "presets"))


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def load_config(cls: type[T], preset: str | None = None, file: str | None = None,
                overrides: dict | None = None) -> T:
    """Build `cls` from defaults < preset < file < overrides (a nested dict), validating every key."""
    obj = cls()
    if preset:
        p = preset_path(preset)
        obj = apply_dict(obj, read_toml(p), str(p))
    if file:
        obj = apply_dict(obj, read_toml(file), str(file))
    if overrides:
        obj = apply_dict(obj, overrides, "overrides")
    return obj


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def write_config(obj: Any, path: str | Path, extra: dict | None = None) -> Path:
    """Write the resolved config (plus git commit) as TOML, atomically."""
    import tomli_w

    from banyan.io import atomic_write_text

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"git_commit": git_commit(), **(extra or {}), **to_dict(obj)}
    return atomic_write_text(path, tomli_w.dumps(data))


def read_saved_config(cls: type[T], path: str | Path) -> T:
    """Load a config written by `write_config` (ignores the bookkeeping keys)."""
    data = read_toml(path)
    names = {f.name for f in dataclasses.fields(cls)}
    return apply_dict(cls(), {k: v for k, v in data.items() if k in names}, str(path))


# ----------------------------------------------------------------------------- CLI
def _pop_option(argv: list[str], name: str) -> tuple[str | None, list[str]]:
    """Remove `--name VALUE` / `--name=VALUE` from argv; returns (value, rest)."""
    rest, value, i = [], None, 0
    while i < len(argv):
        a = argv[i]
        if a == name:
            if i + 1 >= len(argv):
                raise ConfigError(f"{name} needs a value")
            value = argv[i + 1]
            i += 2
            continue
        if a.startswith(name + "="):
            value = a.split("=", 1)[1]
        else:
            rest.append(a)
        i += 1
    return value, rest


def parse_cli(cls: type[T], argv: list[str] | None = None, prog: str = "banyan",
              description: str | None = None, default_preset: str | None = None) -> T:
    """Parse `--preset NAME`, `--config FILE.toml` and dotted flags (`--model.n_layer 4`) into `cls`.

    The preset and file are applied first; tyro then parses the remaining flags with that object
    as its default, so CLI > file > preset > defaults. `cls.takes_presets` (default False) allows
    --preset; `cls.takes_config_file` (default True) says whether --config is a TOML of `cls`.
    """
    import tyro

    argv = list(sys.argv[1:] if argv is None else argv)
    wants_help = "-h" in argv or "--help" in argv
    takes_presets = bool(getattr(cls, "takes_presets", False))
    takes_file = bool(getattr(cls, "takes_config_file", True))
    preset, argv = _pop_option(argv, "--preset")
    file, argv = _pop_option(argv, "--config") if takes_file else (None, argv)
    if preset and not takes_presets:
        raise ConfigError(f"--preset applies to training runs (pretrain, bench train); {prog} takes --config FILE.toml")
    default = load_config(cls, preset or default_preset, file)
    desc = description or (cls.__doc__ or "")
    if wants_help and takes_presets:
        desc += ("\n\nAlso: --preset NAME (one of: " + ", ".join(list_presets()) +
                 ") and --config FILE.toml; precedence CLI > --config > --preset > defaults.")
    elif wants_help and takes_file:
        desc += "\n\nAlso: --config FILE.toml (flags override it)."
    cfg = tyro.cli(cls, args=argv, default=default, prog=prog, description=desc, use_underscores=True)
    check_ranges(cfg, getattr(cfg, "ranges", {}))  # at parse time: before any torchrun launch
    return cfg


def check_ranges(obj: Any, ranges: dict[str, tuple[float | None, float | None]], prefix: str = "") -> None:
    """Every float field must be finite; each dotted key in `ranges` must lie in [lo, hi] (None: unbounded).

    One ConfigError naming the flag, the value and the allowed range."""
    for f in dataclasses.fields(obj):
        value, key = getattr(obj, f.name), prefix + f.name
        if dataclasses.is_dataclass(value):
            check_ranges(value, ranges, key + ".")
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"--{key} must be a finite number, got {value}")
        if key in ranges and isinstance(value, (int, float)) and not isinstance(value, bool):
            lo, hi = ranges[key]
            if (lo is not None and value < lo) or (hi is not None and value > hi):
                allowed = f">= {lo}" if hi is None else f"<= {hi}" if lo is None else f"in [{lo}, {hi}]"
                raise ConfigError(f"--{key} must be {allowed}, got {value}")
