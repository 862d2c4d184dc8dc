"""A checkpoint folder: which of its files are the checkpoint's, and the lock that keeps two writers apart.

A save touches only the names below (the manifest, its versioned tensor files, their temporary copies and
the lock file); every other file in the folder is the user's. The lock is an advisory lock on
`.checkpoint.lock`, taken for a whole run (`stages.claim`) and by each save; it is re-entrant within a process.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; saves are still atomic
    fcntl = None  # type: ignore[assignment]

MANIFEST = "checkpoint.json"
MODEL_FILE = "model.safetensors"  # the file names of version 1
TRAINING_FILE = "training.safetensors"
LOCK_FILE = ".checkpoint.lock"
VERSIONED = re.compile(r"(model|training)-[0-9]+\.safetensors")
TEMPORARY = re.compile(r"((model|training)-[0-9]+\.safetensors|checkpoint\.json)\.tmp")
MAX_MANIFEST_BYTES = 256 * 2**20


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated, corrupted, of an unknown format, or cannot be written."""


class FolderInUseError(CheckpointError):
    """Another process holds the lock on a checkpoint folder."""


def is_checkpoint_file(name: str) -> bool:
    """Whether a file name in a checkpoint folder belongs to the checkpoint (the only names a save touches)."""
    return (
        name in (MANIFEST, LOCK_FILE, MODEL_FILE, TRAINING_FILE)
        or VERSIONED.fullmatch(name) is not None
        or TEMPORARY.fullmatch(name) is not None
    )


def other_files(path: str | Path) -> list[str]:
    """Names of the entries of folder `path` that are not the checkpoint's own files, sorted."""
    return sorted(entry.name for entry in Path(path).iterdir() if not is_checkpoint_file(entry.name))


# --- the lock ---------------------------------------------------------------------------------

_held: dict[str, list[int]] = {}  # real path of a folder -> [lock file descriptor, nesting depth]


def _acquire(folder: Path) -> int:
    lock = folder / LOCK_FILE
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except OSError as err:
            raise CheckpointError(
                f"cannot write to {folder} ({err.strerror}); choose a folder you can write to"
            ) from None
        if fcntl is None:
            return fd
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            os.close(fd)
            who = f"process {holder}" if holder.isdigit() else "another process"
            raise FolderInUseError(
                f"{folder} is in use by {who}, which is writing a checkpoint there (lock file {lock}); "
                "wait for it to finish or stop it, or choose another folder"
            ) from None
        except OSError:  # a file system without locks: go on unlocked
            return fd
        try:
            current = os.stat(lock, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:  # not a lock file that its last holder deleted while we waited for it
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            return fd
        os.close(fd)


@contextlib.contextmanager
def folder_lock(path: str | Path) -> Iterator[None]:
    """Hold the lock of checkpoint folder `path` (which must exist); re-entrant within a process.

    Another process holding it is a FolderInUseError that names its PID; a folder that cannot be
    written to is a CheckpointError. The lock file is removed on release.
    """
    key = os.path.realpath(path)
    if key in _held:
        _held[key][1] += 1
    else:
        _held[key] = [_acquire(Path(path)), 1]
    try:
        yield
    finally:
        _held[key][1] -= 1
        if _held[key][1] == 0:
            fd = _held.pop(key)[0]
            with contextlib.suppress(OSError):
                os.unlink(Path(path) / LOCK_FILE)
            os.close(fd)


def check_folder(path: Path) -> None:
    """Refuse a path that is a file, or a link to no folder, as a checkpoint folder."""
    if path.is_symlink() and not path.is_dir():
        raise CheckpointError(f"{path} is a symbolic link to no folder; give a folder for the checkpoint")
    if path.exists() and not path.is_dir():
        raise CheckpointError(f"{path} is a file, not a folder; give a folder for the checkpoint")


def named_files(manifest: dict[str, Any] | None) -> set[str]:
    """The checkpoint files a parsed manifest names (only names a save may create, whatever it says)."""
    if manifest is None:
        return set()
    files = manifest.get("files")
    names = set(files.values()) if isinstance(files, dict) else set()
    if manifest.get("version") == 1 and isinstance(manifest.get("sha256"), dict):
        names |= set(manifest["sha256"]) & {MODEL_FILE, TRAINING_FILE}
    return {n for n in names if isinstance(n, str) and (VERSIONED.fullmatch(n) or n in (MODEL_FILE, TRAINING_FILE))}


def remove_file(path: Path) -> None:
    """Delete the file (or link) at `path` if it is there; never a folder, and no error if it cannot."""
    with contextlib.suppress(OSError):
        if not path.is_dir() or path.is_symlink():
            path.unlink()


def remove_leftovers(path: Path, keep: set[str]) -> None:
    """Delete what interrupted saves of the run in `path` left: its temporary and versioned files no manifest names.

    Called only when the folder holds a readable manifest: in a folder without one, nothing is the run's
    to remove (a file named like a checkpoint's may be the user's), so nothing is deleted.
    """
    for entry in path.iterdir():
        if TEMPORARY.fullmatch(entry.name) or (VERSIONED.fullmatch(entry.name) and entry.name not in keep):
            remove_file(entry)


def fsync_folder(path: Path) -> None:
    """Make the renames in folder `path` durable (where the platform allows it)."""
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def fsync_file(path: Path) -> bytes:
    """Flush a written file to disk and return its bytes."""
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())
        handle.seek(0)
        return handle.read()
