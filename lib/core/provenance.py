"""Where a result came from: code version, content hashes, environment."""
from __future__ import annotations

import hashlib
import platform
import subprocess
from pathlib import Path

from .. import __version__
from . import paths


def code_version() -> str:
    """Git commit of the project (with '+dirty' when the tree has changes), or the package version."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=paths.ROOT,
                             capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=paths.ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except Exception:  # no git, or not a checkout
        return f"v{__version__}"


def file_hash(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()[:16]


def hash_strings(items) -> str:
    """Order-independent hash of a collection of strings (e.g. a manifest's content hashes)."""
    h = hashlib.sha256()
    for s in sorted(map(str, items)):
        h.update(s.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def environment() -> dict:
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.cuda.is_available(), "platform": platform.platform()}
