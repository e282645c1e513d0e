"""Reading a sharded (DCP) checkpoint without running code from it.

torch.distributed.checkpoint's FileSystemReader opens `dcp/.metadata` with a plain `pickle.load`,
so a checkpoint someone downloaded could run its author's code on `--resume`, `--init` or
`banyan checkpoint consolidate`. `SafeFileSystemReader` unpickles the metadata with an allow-list
of the plain data classes DCP writes (read off real .metadata files: the dataclasses of
torch.distributed.checkpoint.metadata, torch.Size, dtypes, layouts, paths) and refuses anything
else with a CheckpointError naming the file and the global. The tensor payloads are raw bytes, and
non-tensor values go through `torch.load(weights_only=True)` (dist_checkpoint.safe_load_planner).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from banyan.errors import CheckpointError

_ALLOWED = {
    "torch.distributed.checkpoint.metadata": {"Metadata", "MetadataIndex", "StorageMeta", "TensorProperties",
                                              "TensorStorageMetadata", "BytesStorageMetadata",
                                              "ChunkStorageMetadata", "_MEM_FORMAT_ENCODING"},
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},
    "torch": {"Size"},
    "pathlib": {"Path", "PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath"},
    "collections": {"OrderedDict"},
}


class _MetadataUnpickler(pickle.Unpickler):
    def __init__(self, f, where: Path):
        super().__init__(f)
        self.where = where

    def find_class(self, module: str, name: str):
        if name in _ALLOWED.get(module, ()):
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)  # dtypes pickle as the module attribute torch.float32, ...
        raise CheckpointError(f"{self.where}: refusing to load '{module}.{name}' (a DCP metadata file holds only "
                              f"checkpoint metadata; this one may run code: do not use this checkpoint)")


def read_metadata_file(path: str | Path):
    """The Metadata object of a DCP `.metadata` file, unpickled with the allow-list."""
    path = Path(path)
    with open(path, "rb") as f:
        try:
            return _MetadataUnpickler(f, path).load()
        except CheckpointError:
            raise
        except Exception as e:  # noqa: BLE001 - truncated / not a pickle: one clear line
            raise CheckpointError(f"{path}: not a readable DCP metadata file ({type(e).__name__}: {e})") from None


def failure_line(e: BaseException) -> str:
    """One line for a DCP load failure: its CheckpointException (a BaseException whose str() is every rank's
    traceback) is unwrapped to the first failing rank's own error."""
    failures = getattr(e, "failures", None)
    if failures:
        e = next(iter(failures.values()))[0]
    text = [line.strip() for line in str(e).splitlines() if line.strip()]
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def check_data_files(checkpoint_dir: Path, metadata) -> None:
    """Every `.distcp` file the metadata points into exists and is as long as its last item needs.

    A truncated or missing shard (an interrupted copy, a full disk) would otherwise fail deep inside
    DCP's per-rank reader as a many-line CheckpointException (a BaseException) naming no file."""
    needed: dict[str, int] = {}
    for info in (getattr(metadata, "storage_data", None) or {}).values():
        end = int(info.offset) + int(info.length)
        needed[info.relative_path] = max(needed.get(info.relative_path, 0), end)
    for name, end in sorted(needed.items()):
        path = checkpoint_dir / name
        size = path.stat().st_size if path.is_file() else None
        if size is None or size < end:
            got = "is missing" if size is None else f"is truncated ({size} bytes; its metadata needs {end})"
            raise CheckpointError(f"{path} {got}: the checkpoint was not completely written or copied; "
                                  "copy it again or use an earlier checkpoint")


def safe_reader(checkpoint_dir: str | Path):
    """A FileSystemReader for `checkpoint_dir` whose metadata is read with the allow-list.

    The metadata is read (and refused, with a CheckpointError) right here, before any DCP code runs,
    so the error is not wrapped in DCP's per-rank exception."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    checked = read_metadata_file(Path(checkpoint_dir) / ".metadata")
    check_data_files(Path(checkpoint_dir), checked)

    class SafeFileSystemReader(FileSystemReader):
        def read_metadata(self, *args, **kwargs):
            metadata = checked
            if getattr(metadata, "storage_meta", None) is None:  # as FileSystemReader.read_metadata does
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return SafeFileSystemReader(str(checkpoint_dir))
