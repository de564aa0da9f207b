"""Reading images: decode checks, content hashes, resized grayscale arrays."""
from __future__ import annotations

import hashlib
import io
import logging
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from . import paths

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")   # what a folder of images may hold


def is_image(p: Path) -> bool:
    """A visible file with an image suffix (hidden files, e.g. .DS_Store or half-written .tmp, are not)."""
    return p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def check_and_hash(path: str | Path) -> str | None:
    """The file's content hash, or None when it cannot be read or decoded."""
    try:
        data = Path(path).read_bytes()
        with Image.open(io.BytesIO(data)) as im:
            im.load()
        return content_hash(data)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
        return None


def load_gray(path: str | Path, size: int | None = None) -> np.ndarray:
    """Grayscale float32 in [0, 1], resized to size x size when given."""
    with Image.open(paths.resolve(path)) as im:
        im = im.convert("L")
        if size is not None and im.size != (size, size):
            im = im.resize((size, size), Image.BILINEAR)
        return np.asarray(im, dtype=np.float32) / 255.0


def load_stack(paths_: list[str], size: int) -> np.ndarray:
    """N x size x size float32 array of the given images."""
    return np.stack([load_gray(p, size) for p in paths_]) if len(paths_) else np.zeros((0, size, size), np.float32)


def relpath(path: str | Path) -> str:
    """Store paths relative to the project root when they lie inside it, so runs move with the project."""
    p = Path(path).resolve()
    try:
        return str(p.relative_to(paths.ROOT))
    except ValueError:
        return str(p)

