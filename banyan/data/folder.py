"""Where `banyan data prepare` may write, and the check a load makes of a prepared folder.

Rules (issue 16: a prepare must never delete a user's files):
- `--out` must not be, lie inside, or contain the text source (`--source`): a later prepare would
  replace the corpus, or the run folders beside it.
- `--out` may hold only files banyan wrote: those its manifest.json lists (for a folder prepared
  before manifests: meta.json, the tokenizer files and the shards meta.json names). Anything else is
  refused, naming up to 5 of them.
- An existing prepared set is replaced only with `--overwrite`, and then only its listed files are
  removed (banyan.manifest.replace_contents); the folder itself and its lock stay.

A prepared folder's manifest lists sizes and SHA-256 of every file. A load checks sizes of all of
them and hashes of the small ones (meta.json, tokenizer files); shards are covered by their own
CRC32, which banyan.data.shards checks on every open, so the large files are not read twice.
"""

from __future__ import annotations

import json
from pathlib import Path

from banyan import manifest
from banyan.data.shards import META_FORMAT
from banyan.errors import DataError

SHARD_SUFFIX = ".bin"


def check_source_apart(out: Path, source: str) -> None:
    """--out must be neither the source, nor inside it, nor a folder that contains it."""
    if not source or source.startswith("hf:"):
        return
    src, dst = Path(source).expanduser().resolve(), out.resolve()
    if dst == src:
        how = "is"
    elif src in dst.parents:
        how = "is inside"
    elif dst in src.parents:
        how = "contains"
    else:
        return
    raise DataError(f"--out '{out}' {how} the --source '{source}'; a later prepare into it would replace the "
                    f"source; choose an --out outside it")


def owned_data_files(out: Path) -> set[str]:
    """Files of `out` that banyan wrote: its manifest's, else (an older prepared folder) what meta.json names."""
    owned = manifest.owned_files(out)
    if owned or not (out / "meta.json").is_file():
        return owned
    try:
        meta = json.loads((out / "meta.json").read_text(encoding="utf-8"))
        if meta.get("format") != META_FORMAT:
            return set()  # not a meta.json banyan wrote: nothing in the folder is known to be ours
        shards = [name for split in meta.get("splits", {}).values() for name in split.get("shards", [])]
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, TypeError):
        return set()
    return {"meta.json", "tokenizer.json", "tokenizer_config.json", *filter(manifest.safe_name, shards)}


def check_out(out: Path, overwrite: bool) -> set[str]:
    """Refuse an --out with foreign files, or a prepared set without --overwrite; returns the files to replace."""
    if out.exists() and not out.is_dir():
        raise DataError(f"--out '{out}' is a file, not a folder")
    if not out.is_dir():
        return set()
    owned = owned_data_files(out)
    manifest.refuse_foreign(out, manifest.foreign_files(out, owned), "--out", DataError)
    if owned and not overwrite:
        raise DataError(f"--out '{out}' already holds a prepared data set; pass --overwrite to replace it "
                        f"or choose another --out")
    return owned


def verify_data_folder(folder: Path) -> None:
    """Sizes of every listed file and SHA-256 of all but the shards (their CRC32 is checked on open)."""
    manifest.verify(folder, skip_hash=(SHARD_SUFFIX,), what="data folder")
