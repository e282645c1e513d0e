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


def safe_reader(checkpoint_dir: str | Path):
    """A FileSystemReader for `checkpoint_dir` whose metadata is read with the allow-list.

    The metadata is read (and refused, with a CheckpointError) right here, before any DCP code runs,
    so the error is not wrapped in DCP's per-rank exception."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    checked = read_metadata_file(Path(checkpoint_dir) / ".metadata")

    class SafeFileSystemReader(FileSystemReader):
        def read_metadata(self, *args, **kwargs):
            metadata = checked
            if getattr(metadata, "storage_meta", None) is None:  # as FileSystemReader.read_metadata does
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return SafeFileSystemReader(str(checkpoint_dir))
