"""Atomic artefact writes: write to a temporary sibling, then rename, so a crash never leaves half a file."""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import socket
import tempfile
import time
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


class DiskFull(OSError):
    """No space (or quota) left while writing an artefact; nothing was left behind under its name."""


# ----------------------------------------------------------------------------- temporary siblings
# A temporary sibling is named .<name>.<host>.<pid>.<random>.tmp, so a later process can tell one left by
# a killed writer (its pid is gone on this host, or it is older than STALE_SECONDS) from one being written.
STALE_SECONDS = 3600
_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname().split(".")[0])[:32] or "host"
_TEMP = re.compile(r"^\.(?P<name>.+?)(?:\.(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+))?\.[^.]+\.tmp$")
_cleaned: set[str] = set()          # folders this process has already cleaned


def _prefix(path: Path) -> str:
    return f".{path.name}.{_HOST}.{os.getpid()}."


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:                 # EPERM: another user's live process
        pass
    return True


def is_stale(p: Path, now: float | None = None) -> bool:
    """A temporary sibling whose writer is gone: older than STALE_SECONDS, or written by a process of
    this host that no longer runs. Writers on other hosts (a shared file system) are judged by age only."""
    m = _TEMP.match(p.name)
    if m is None:
        return False
    try:
        age = (now or time.time()) - p.lstat().st_mtime
    except OSError:
        return False
    if age > STALE_SECONDS:
        return True
    return m["pid"] is not None and m["host"] == _HOST and not _alive(int(m["pid"]))


def clean_stale(folder: str | Path, recursive: bool = False) -> list[Path]:
    """Remove the temporary files and folders that killed atomic writes left in ``folder``; returns them."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [p for p in (folder.rglob(".*.tmp") if recursive else folder.glob(".*.tmp")) if is_stale(p)]
    for p in found:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return found


def _clean_once(folder: Path) -> None:
    """The first write of this process into a folder clears what killed writers left there."""
    if str(folder) not in _cleaned:
        _cleaned.add(str(folder))
        clean_stale(folder)


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def _disk_full(exc: OSError, path: Path) -> DiskFull:
    """ENOSPC / EDQUOT as an error that names the file and what to do."""
    what = "the disk is full" if exc.errno == errno.ENOSPC else "the disk quota is used up"
    return DiskFull(exc.errno, f"cannot write {path}: {what} ({exc.strerror}). Nothing was written under that "
                               f"name. Free space on the file system of {path.parent} (or move the runs root with "
                               "SUITE_RUNS_ROOT) and run again: finished artefacts are kept and the run resumes.")


@contextmanager
def atomic_path(path: str | Path, overwrite: bool = True):
    """Yield a temporary path next to ``path``; on success it replaces ``path`` in one rename."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise ResultExistsError(f"{path} already exists; refusing to overwrite a finished result. "
                                "Delete it or choose another run directory.")
    path.parent.mkdir(parents=True, exist_ok=True)
    _clean_once(path.parent)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=_prefix(path), suffix=".tmp", dir=path.parent)
        os.close(fd)
        os.chmod(tmp, 0o666 & ~umask())   # mkstemp makes 0600; artefacts follow the user's umask
        yield Path(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        if exc.errno in DISK_FULL:
            raise _disk_full(exc, path) from exc
        raise
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)


@contextmanager
def atomic_dir(path: str | Path, replace: bool = False):
    """Yield an empty staging folder next to ``path``; on success it becomes ``path`` in one rename (with
    ``replace``, an existing ``path`` is removed first). The folder follows the umask: tempfile.mkdtemp makes
    it 0700, which would hide a model from the rest of a group sharing the runs root or the model cache."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(path.parent)
    staging = None
    try:
        staging = Path(tempfile.mkdtemp(prefix=_prefix(path), suffix=".tmp", dir=path.parent))
        os.chmod(staging, 0o777 & ~umask())
        yield staging
        if replace and path.exists():
            shutil.rmtree(path)
        os.replace(staging, path)
    except OSError as exc:
        if exc.errno in DISK_FULL:
            raise _disk_full(exc, path) from exc
        raise
    finally:
        if staging is not None and staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


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

    with atomic_path(path, overwrite) as tmp, open(tmp, "wb") as fh:
        torch.save(obj, fh)     # through a handle: a path would name the zip's records after the temp file,
    return Path(path)           # so identical weights saved twice would differ in bytes (and in their hash)


def save_image(path, image, overwrite: bool = True) -> Path:
    """Save a PIL image atomically; the format comes from ``path``'s suffix."""
    path = Path(path)
    with atomic_path(path, overwrite) as tmp:
        image.save(tmp, format=path.suffix.lstrip(".").upper().replace("JPG", "JPEG"))
    return path
