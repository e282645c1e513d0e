"""Atomic file writes: the one place banyan writes a file via a temporary name and a rename.

A reader (another process, a resumed run, a plot watching a run) either sees the old file or
the complete new one, never half a file: the bytes go to a hidden temp file in the same folder
(same filesystem, so `os.replace` is an atomic rename), are fsynced, then renamed over the
target. The temp name carries the process id, so two processes writing the same target do not
write into one temp file. If writing fails the temp file is removed and the old file is untouched.

`atomic_path` is for writers that want a path (safetensors `save_file`, `torch.save`,
matplotlib `savefig`); the temp name keeps the target's extension because some of them pick
the format from it. Folder-sized outputs (checkpoints, prepared data sets) are written into a
temp folder by their modules and put in place with `replace_dir`.

Imports nothing from banyan, so every layer may use it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable


def temp_name(path: Path) -> Path:
    """`dir/.NAME.tmpPID.EXT` beside `path`: hidden (globs like `step_*` skip it), unique per process,
    and ending in the target's extension (matplotlib infers the image format from it)."""
    return path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, fsync: bool = True) -> Iterator[Path]:
    """Yield a temp path beside `path`; when the block ends normally, rename it onto `path`.

    The parent folder is created. If the block raises (or writes nothing), the temp file is
    removed, the old `path` is left as it was and the error propagates.

        with atomic_path(out / "model.safetensors") as tmp:
            save_file(tensors, str(tmp))
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        yield tmp
        if fsync:  # the data must be on disk before the rename makes it visible (power loss)
            _fsync(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes | bytearray | memoryview) -> Path:
    """Write `data` to `path` atomically; returns the path."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
    return path


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write `text` to `path` atomically; returns the path."""
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: str | os.PathLike, data: Any, indent: int | None = 2,
                      default: Callable[[Any], Any] | None = None) -> Path:
    """Write `data` as JSON (plus a trailing newline) to `path` atomically; returns the path.

    `default` converts objects json cannot (e.g. `float` for numpy scalars, `str` for paths).
    """
    return atomic_write_text(path, json.dumps(data, indent=indent, default=default) + "\n")


def replace_dir(tmp: str | os.PathLike, final: str | os.PathLike) -> Path:
    """Rename the fully written folder `tmp` to `final`; an existing `final` is moved aside first
    (to a hidden `.NAME.oldPID`, so globs for finished outputs never list it) and removed after.

    Folders cannot be swapped in one rename: between the two renames `final` is briefly absent,
    but it is never half-written.
    """
    tmp, final = Path(tmp), Path(final)
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)  # left by an earlier crash of a process with this pid
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return final


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Save a matplotlib figure to `path` atomically (format from the extension), then close it."""
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi)
    finally:
        # pyplot keeps every figure it made alive otherwise; a bare Figure (never pyplot's) needs no close,
        # and importing pyplot just to close nothing costs ~0.2 s
        plt = sys.modules.get("matplotlib.pyplot")
        if plt is not None:
            plt.close(fig)
    return Path(path)


__all__ = ["FolderLock", "atomic_path", "atomic_write_bytes", "atomic_write_json", "atomic_write_text", "is_no_space",
           "remove_stale_temps", "replace_dir", "save_figure", "temp_name"]


class FolderLock:
    """An exclusive lock on a run or data folder for the life of the process (fcntl.flock on FOLDER/.lock).

    A second banyan process writing into the same folder gets one line naming the holder's pid instead
    of two runs tearing each other's metrics and checkpoints. The kernel drops the lock when the
    process dies (even by SIGKILL), so a stale lock file never blocks a resume."""

    def __init__(self, folder: str | os.PathLike, what: str = "folder"):
        self.folder, self.what = Path(folder), what
        self._fd: int | None = None

    def acquire(self) -> "FolderLock":
        import fcntl

        from banyan.errors import BanyanError

        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.folder / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise BanyanError(f"{self.what} '{self.folder}' is in use by pid {holder}; wait for it to finish "
                              f"or choose another folder") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        self.acquired_at = time.time()  # temp folders older than this cannot belong to a live writer
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def is_no_space(exc: BaseException) -> bool:
    """Whether `exc` (or an error it wraps: `raise ... from`, DCP's per-rank failures) is a full disk."""
    import errno

    seen, todo = set(), [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(e):  # torch's C++ writers raise RuntimeError with the text
            return True
        # DCP's CheckpointException: failures = {rank: (exception, traceback)}
        wrapped = [v[0] if isinstance(v, tuple) else v for v in (getattr(e, "failures", None) or {}).values()]
        todo += [e.__cause__, e.__context__, *[v for v in wrapped if isinstance(v, BaseException)]]
    return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temps(parent: str | os.PathLike, pattern: str, older_than: float | None = None) -> list[Path]:
    """Remove temp folders/files `parent/pattern` (names ending in `.tmp-PID`, `.tmpPID`, `.oldPID`,
    `.old-PID` or `.tmp-dcp`) left by a killed writer: its PID is not alive, or the entry is older
    than `older_than` (the caller's lock time: every writer holds the lock, so it cannot be live).
    Prints one line per removal; returns what was removed."""
    import re

    removed = []
    for p in sorted(Path(parent).glob(pattern)):
        m = re.search(r"\.(?:tmp|old)-?(\d+|dcp)(?:\.\w+)?$", p.name)
        if not m or (m.group(1) != "dcp" and int(m.group(1)) == os.getpid()):
            continue
        dead = m.group(1) != "dcp" and not _pid_alive(int(m.group(1)))
        try:
            old = older_than is not None and p.lstat().st_mtime < older_than
        except FileNotFoundError:
            continue
        if not (dead or old):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
        print(f"removed stale temporary {p} (left by an interrupted writer)", flush=True)
    return removed
