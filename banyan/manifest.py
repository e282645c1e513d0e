"""manifest.json: what banyan wrote into a folder (checkpoint, prepared data set, export), written last.

    {"format": "banyan-manifest", "version": 1, "kind": "checkpoint" | "data" | "run" | "export",
     "banyan_version": "0.1.0", "files": {"model.safetensors": {"size": 16777304, "sha256": "..."}, ...}}

Names are relative to the folder (POSIX separators, sub-folders such as `dcp/` included). The
manifest is the last file a writer adds, atomically, so a folder with a manifest is complete; a
reader checks sizes always (one stat per file) and SHA-256 when asked (a 125M-param checkpoint hashes
in about a second, see README). It also says which files a later `--overwrite` may remove: only
those; anything else in the folder is the user's and is never deleted (`foreign_files`).

Imports only banyan.errors / banyan.io, so every layer may use it.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from banyan.errors import IntegrityError
from banyan.io import atomic_write_json

NAME = "manifest.json"
FORMAT = "banyan-manifest"
KINDS = ("checkpoint", "data", "run", "export")
# never listed and never foreign: the folder lock and in-flight bookkeeping of this module
_INTERNAL = {NAME, ".lock", ".manifest-pending.json"}
_CHUNK = 1 << 22  # hash 4 MiB at a time: bounded memory for multi-GB files


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _walk(folder: Path) -> list[str]:
    """Every file under `folder` as a relative POSIX name, sorted (symlinks and internal files skipped)."""
    names = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for f in files:
            p = Path(root) / f
            rel = p.relative_to(folder).as_posix()
            if not p.is_symlink() and rel not in _INTERNAL:
                names.append(rel)
    return sorted(names)


def write_manifest(folder: str | os.PathLike, kind: str, names: list[str] | None = None,
                   extra: dict[str, Any] | None = None) -> Path:
    """Hash `names` (default: every file in `folder`) and write FOLDER/manifest.json atomically; call it last."""
    from banyan import __version__

    if kind not in KINDS:
        raise ValueError(f"manifest kind must be one of {KINDS}, got {kind!r}")
    folder = Path(folder)
    files = {}
    for rel in names if names is not None else _walk(folder):
        p = folder / rel
        files[rel] = {"size": p.stat().st_size, "sha256": sha256_file(p)}
    doc = {"format": FORMAT, "version": 1, "kind": kind, "banyan_version": __version__, **(extra or {}),
           "files": files}
    return atomic_write_json(folder / NAME, doc, indent=1)


def add_files(folder: str | os.PathLike, names: list[str]) -> None:
    """List (or re-list) `names` in FOLDER/manifest.json after banyan added them (a consolidated
    model.safetensors in a checkpoint); a folder without a manifest stays without one."""
    folder = Path(folder)
    doc = read_manifest(folder)
    if doc is None:
        return
    for rel in names:
        doc["files"][rel] = {"size": (folder / rel).stat().st_size, "sha256": sha256_file(folder / rel)}
    atomic_write_json(folder / NAME, doc, indent=1)


def read_manifest(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The folder's manifest, None when it has none; a torn or foreign manifest is an IntegrityError."""
    path = Path(folder) / NAME
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise IntegrityError(f"{path}: invalid JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("files"), dict):
        raise IntegrityError(f"{path}: not a banyan manifest (expected format {FORMAT!r} with a 'files' table)")
    bad = [rel for rel in doc["files"] if not safe_name(rel)]
    if bad:  # a name like ../x would let an --overwrite remove files outside the folder
        raise IntegrityError(f"{path}: file name {bad[0]!r} is not a plain relative path inside the folder")
    return doc


def safe_name(rel: Any) -> bool:
    """A relative POSIX name that stays inside its folder (no '..', '.', empty part, backslash or leading /)."""
    if not isinstance(rel, str):
        return False
    parts = rel.split("/")
    return bool(rel) and not rel.startswith("/") and "\\" not in rel and all(p not in ("", ".", "..") for p in parts)


def verify(folder: str | os.PathLike, hashes: bool = True, skip_hash: tuple[str, ...] = (),
           what: str = "folder") -> dict[str, Any] | None:
    """Check every listed file exists with its size (and SHA-256 unless `hashes` is False or its name ends
    with one of `skip_hash`); returns the manifest, or None (with a warning) for a folder written before
    manifests existed. The first mismatch is one IntegrityError naming the file, expected vs got."""
    folder = Path(folder)
    doc = read_manifest(folder)
    if doc is None:
        print(f"warning: {what} {folder} has no {NAME} (written by an older banyan); loading it unverified",
              file=sys.stderr)
        return None
    for rel, entry in doc["files"].items():
        p = folder / rel
        if not p.is_file():
            raise IntegrityError(f"{what} {folder}: {rel} is missing (listed in {NAME})")
        size = p.stat().st_size
        if size != entry.get("size"):
            raise IntegrityError(f"{what} {folder}: {rel} has {size} bytes, {NAME} says {entry.get('size')} "
                                 f"(truncated or replaced)")
        if hashes and not rel.endswith(skip_hash) and sha256_file(p) != entry.get("sha256"):
            raise IntegrityError(f"{what} {folder}: {rel} does not match its SHA-256 in {NAME} (altered or corrupted)")
    return doc


def owned_files(folder: str | os.PathLike) -> set[str]:
    """Files banyan wrote into `folder`: its manifest's, plus those of an interrupted replace (pending list)."""
    folder = Path(folder)
    doc = read_manifest(folder)
    owned = set(doc["files"]) if doc else set()
    pending = folder / ".manifest-pending.json"
    if pending.is_file():
        try:
            owned |= {rel for rel in json.loads(pending.read_text(encoding="utf-8")) if safe_name(rel)}
        except (json.JSONDecodeError, UnicodeDecodeError, TypeError):
            pass  # a torn pending list protects nothing extra: its files then count as foreign
    return owned


def foreign_files(folder: str | os.PathLike, owned: set[str] | None = None) -> list[str]:
    """Files in `folder` banyan did not write (not in `owned`, default: owned_files), sorted."""
    owned = owned_files(folder) if owned is None else owned
    return [n for n in _walk(Path(folder)) if n not in owned]


def refuse_foreign(folder: Path, foreign: list[str], what: str, error: type[Exception] = IntegrityError) -> None:
    """One line (an `error`) naming up to 5 files banyan did not write, when there are any."""
    if foreign:
        more = f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
        raise error(f"{what} '{folder}' holds files banyan did not write ({', '.join(foreign[:5])}{more}); "
                             f"refusing to replace it; move them away or choose another --out")


def replace_contents(new: Path, final: Path, owned: set[str]) -> None:
    """Move every file of the finished folder `new` into `final`, after removing the `owned` files there
    (the previous set banyan wrote); nothing else in `final` is touched, so its lock stays in place.

    The old manifest goes first (the folder stops looking complete) and the new one comes last; a
    pending list names old and new files meanwhile, so a crash half-way leaves nothing that a later
    run would mistake for the user's files."""
    final.mkdir(parents=True, exist_ok=True)
    incoming = _walk(new) + ([NAME] if (new / NAME).is_file() else [])  # _walk leaves the manifest out
    atomic_write_json(final / ".manifest-pending.json", sorted(owned | set(incoming) | {NAME}), indent=None)
    (final / NAME).unlink(missing_ok=True)
    for rel in sorted(owned - {NAME}):
        (final / rel).unlink(missing_ok=True)
    for rel in incoming:  # the manifest last
        (final / rel).parent.mkdir(parents=True, exist_ok=True)
        os.replace(new / rel, final / rel)
    (final / ".manifest-pending.json").unlink()


__all__ = ["IntegrityError", "add_files", "foreign_files", "owned_files", "read_manifest", "refuse_foreign",
           "replace_contents", "safe_name", "sha256_file", "verify", "write_manifest"]
