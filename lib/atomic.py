"""Atomic artefact writes: write to a temporary sibling, then rename, so a crash never leaves half a file."""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path


class LockTimeout(TimeoutError):
    """Another process held a lock for longer than the caller would wait."""


@contextmanager
def exclusive(lock_path: str | Path, timeout: float | None = None, what: str | None = None):
    """One process at a time (an advisory file lock), e.g. parallel sweep points building one stage or model.

    When another process holds the lock, say once what is waited for; with ``timeout`` (seconds), give
    up with LockTimeout naming the lock instead of waiting for ever.

    Across machines (sweep points as SLURM jobs or Ray tasks on several nodes) this relies on the shared file
    system honouring flock() between nodes: Linux's NFS client turns flock into NFS byte-range locks
    (NFSv4, or v3 with lockd), CephFS and GPFS lock cluster-wide, Lustre only when mounted with ``-o flock``
    (``localflock`` locks per node only, and no option fails with ENOSYS, reported below), BeeGFS with
    tuneUseGlobalFileLocks. A lock held by a node that crashed is freed when its lease runs out (NFSv4:
    about 90 s). The ``filelock`` package would not help: on Unix it calls the same flock().
    """
    import fcntl
    import time

    lock_path = Path(lock_path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as fh:
        start, told = time.monotonic(), False
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if not isinstance(exc, BlockingIOError):    # ENOLCK, ENOSYS, EOPNOTSUPP: no locks on this FS
                    raise OSError(exc.errno, f"cannot lock {lock_path}: this file system does not support flock() "
                                  f"({exc.strerror}); put the runs root on one that does (on Lustre mount with "
                                  "-o flock; on NFS run lockd / use NFSv4).") from exc
                if not told:
                    print(f"waiting for {what or lock_path.name}: another process holds {lock_path}", flush=True)
                    told = True
                if timeout is not None and time.monotonic() - start > timeout:
                    raise LockTimeout(f"gave up after {timeout:g} s waiting for {lock_path} ({what or 'a lock'}); "
                                      "another process holds it. If none is running, delete the lock file.") from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def umask() -> int:
    """The process umask, read without changing it (Linux); elsewhere set and restored at once."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class ResultExistsError(FileExistsError):
    """Raised instead of silently overwriting a finished result."""


@contextmanager
def atomic_path(path: str | Path, overwrite: bool = True):
    """Yield a temporary path next to ``path``; on success it replaces ``path`` in one rename."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise ResultExistsError(f"{path} already exists; refusing to overwrite a finished result. "
                                "Delete it or choose another run directory.")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~umask())   # mkstemp makes 0600; artefacts follow the user's umask
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(path, text: str, overwrite: bool = True) -> Path:
    with atomic_path(path, overwrite) as tmp:
        Path(tmp).write_text(text)
    return Path(path)


def write_json(path, obj, overwrite: bool = True) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n", overwrite)


def write_csv(path, df, overwrite: bool = True) -> Path:
    with atomic_path(path, overwrite) as tmp:
        df.to_csv(tmp, index=False)
    return Path(path)


def write_npy(path, array, overwrite: bool = True) -> Path:
    import numpy as np

    with atomic_path(path, overwrite) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, array)
    return Path(path)


def save_torch(path, obj, overwrite: bool = True) -> Path:
    import torch

    with atomic_path(path, overwrite) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def save_image(path, image, overwrite: bool = True) -> Path:
    """Save a PIL image atomically; the format comes from ``path``'s suffix."""
    path = Path(path)
    with atomic_path(path, overwrite) as tmp:
        image.save(tmp, format=path.suffix.lstrip(".").upper().replace("JPG", "JPEG"))
    return path
