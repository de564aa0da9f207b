"""Reading images: decode checks, content hashes, resized grayscale arrays."""
from __future__ import annotations

import hashlib
import io
import logging
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..core import paths
from .nih import DataError

log = logging.getLogger(__name__)
HIGH_DEPTH = ("I", "F")     # PIL modes of more than 8 bits a pixel, besides I;16, I;16B, I;16L, I;16N
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")   # what a folder of images may hold


def is_image(p: Path) -> bool:
    """A visible file with an image suffix (hidden files, e.g. .DS_Store or half-written .tmp, are not)."""
    return p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _bomb(path, exc: Exception) -> DataError:
    return DataError(f"{path} is too large to read safely ({exc}). Downscale it (this suite reads images at a few "
                     "hundred pixels), or remove it from the folder; PIL refuses images this large as a guard "
                     "against decompression bombs.")


def check_and_hash(path: str | Path) -> str | None:
    """The file's content hash, or None when it cannot be read or decoded (an oversized image is a DataError)."""
    try:
        data = Path(path).read_bytes()
        with Image.open(io.BytesIO(data)) as im:
            im.load()
        return content_hash(data)
    except Image.DecompressionBombError as exc:
        raise _bomb(path, exc) from None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
        return None


def _bits(im: Image.Image) -> int:
    """Bits per sample of an integer image PIL holds in more than 8 bits (modes I;16* and I)."""
    if im.mode.startswith("I;16"):
        return 16
    tag = getattr(im, "tag_v2", None)          # a TIFF says how many bits it stores
    bits = tag.get(258) if tag is not None else None
    if bits:
        return int(bits[0] if isinstance(bits, tuple) else bits)
    return 16 if im.format == "PNG" else 32    # PNG holds at most 16 bits a sample


def _unit(im: Image.Image, path) -> np.ndarray:
    """A high-bit-depth grayscale image (modes I;16*, I, F) as float32 in [0, 1], by its bit depth;
    float pixels must already lie in [0, 1]. Anything else is a DataError naming the file."""
    arr = np.asarray(im).astype(np.float64)
    if im.mode == "F":
        top, what = 1.0, "floating-point"
    else:
        bits = _bits(im)
        top, what = float(2 ** bits - 1), f"{bits}-bit"
    lo, hi = (float(np.nanmin(arr)), float(np.nanmax(arr))) if arr.size else (0.0, 0.0)
    if not np.isfinite(arr).all() or lo < 0 or hi > top:
        raise DataError(f"{path} holds {what} pixels in [{lo:g}, {hi:g}], outside [0, {top:g}], so their brightness "
                        "cannot be read. Save it as an 8- or 16-bit grayscale image (or, for floats, scale it to "
                        "[0, 1]).")
    return (arr / top).astype(np.float32)


def load_gray(path: str | Path, size: int | None = None) -> np.ndarray:
    """Grayscale float32 in [0, 1], resized to size x size when given.

    8-bit images (and colour, palette, 1-bit) go through PIL's L conversion; 16- and 32-bit integer images
    are divided by their largest value and float images taken as they are (in [0, 1]), where PIL's L
    conversion would clip them to white or black."""
    try:
        with Image.open(paths.resolve(path)) as im:
            if im.mode in HIGH_DEPTH or im.mode.startswith("I;16"):
                im.load()
                gray = Image.fromarray(_unit(im, path), mode="F")
                if size is not None and gray.size != (size, size):
                    gray = gray.resize((size, size), Image.BILINEAR)
                return np.clip(np.asarray(gray, dtype=np.float32), 0.0, 1.0)
            im = im.convert("L")
            if size is not None and im.size != (size, size):
                im = im.resize((size, size), Image.BILINEAR)
            return np.asarray(im, dtype=np.float32) / 255.0
    except Image.DecompressionBombError as exc:
        raise _bomb(path, exc) from None


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

